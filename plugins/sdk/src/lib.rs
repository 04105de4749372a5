//! The Circuit Breaker plugin SDK for Rust.
//!
//! A plugin is a `cdylib` crate built for `wasm32-wasip2`. Enable exactly
//! one feature, `guard` or `action`, and export your type with
//! [`export_guard!`] or [`export_action!`]:
//!
//! ```ignore
//! use cb_sdk::{Decision, Guard, GuardContext, deny};
//!
//! struct AmountLimit;
//!
//! impl Guard for AmountLimit {
//!     fn evaluate(ctx: GuardContext) -> Decision {
//!         let max = ctx.config["max"].as_f64().unwrap_or(0.0);
//!         match ctx.token.data["amount"].as_f64() {
//!             Some(a) if a <= max => Decision::Allow,
//!             _ => deny("amount-over-limit").message("amount exceeds the limit").detail("max", max).into(),
//!         }
//!     }
//! }
//!
//! cb_sdk::export_guard!(AmountLimit);
//! ```
//!
//! The feature decides which world's bindings (and so which imports and
//! exports) the component gets; a guard cannot even call `transitions`.

#[cfg(all(feature = "guard", feature = "action"))]
compile_error!("enable only one of the `guard` and `action` features of cb-sdk");
#[cfg(not(any(feature = "guard", feature = "action")))]
compile_error!("enable one of the `guard` and `action` features of cb-sdk");

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

pub use serde_json::{self, Value, json};

#[cfg(feature = "guard")]
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "guard",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "__export_world",
        default_bindings_module: "cb_sdk::bindings",
    });
}

#[cfg(feature = "action")]
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "action",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "__export_world",
        default_bindings_module: "cb_sdk::bindings",
    });
}

use bindings::circuit_breaker::plugin::{log as wit_log, token_reader, types};

/// A token, with its data parsed as JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    /// Unique within its workflow.
    pub id: String,
    /// Its workflow.
    pub workflow_id: String,
    /// The definition version it is pinned to.
    pub definition_version: u64,
    /// Its first marked place (the one place of a sequential workflow's
    /// token).
    pub place: String,
    /// Every place it is marked in, in the definition's order (several
    /// after a parallel split).
    pub marking: Vec<String>,
    /// Application data.
    pub data: Value,
    /// String-keyed metadata.
    pub metadata: BTreeMap<String, String>,
    /// Stored revision.
    pub revision: u64,
    /// Creation time.
    pub created_at: SystemTime,
    /// Time this state was stored.
    pub updated_at: SystemTime,
}

/// A transition of the workflow definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransitionInfo {
    /// Its id.
    pub id: String,
    /// Enabled when marked in any one of these (empty with `join`).
    pub from: Vec<String>,
    /// AND-join: enabled only when marked in every one of these.
    pub join: Vec<String>,
    /// The one place it marks (none for a split or a consume-only
    /// transition).
    pub to: Option<String>,
    /// AND-split: every place it marks.
    pub split: Vec<String>,
    /// Places whose marks it clears (reset arcs).
    pub cancel: Vec<String>,
}

/// A workflow definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workflow {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its version.
    pub version: u64,
    /// Its places.
    pub places: Vec<String>,
    /// Where tokens start.
    pub initial_place: String,
    /// Places that end a case.
    pub final_places: Vec<String>,
    /// Its transitions.
    pub transitions: Vec<TransitionInfo>,
}

/// What a guard decides on.
#[derive(Debug, Clone, PartialEq)]
pub struct GuardContext {
    /// The token to be moved.
    pub token: Token,
    /// The transition being fired.
    pub transition: TransitionInfo,
    /// This guard's config from the definition (`Value::Null` if none).
    pub config: Value,
    /// The caller's input (`Value::Null` if none).
    pub input: Value,
    /// Who fires.
    pub actor: Option<String>,
    /// The firing's time (the wall clock reads the same).
    pub fired_at: SystemTime,
}

/// What an action runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionContext {
    /// The transition event's sequence: unique per firing; the same on a retry.
    pub event_sequence: u64,
    /// The token after the move.
    pub token: Token,
    /// The transition that fired.
    pub transition: TransitionInfo,
    /// The (first) place it consumed a mark from.
    pub from: String,
    /// The (first) place it marked (`from` if none).
    pub to: String,
    /// Every mark it consumed.
    pub consumed: Vec<String>,
    /// Every place it marked.
    pub produced: Vec<String>,
    /// The marks its cancel arcs cleared.
    pub cancelled: Vec<String>,
    /// Who fired.
    pub actor: Option<String>,
    /// The caller's input.
    pub input: Value,
    /// This action's config.
    pub config: Value,
    /// When the transition committed.
    pub fired_at: SystemTime,
}

/// A guard's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// The transition may fire.
    Allow,
    /// It may not.
    Deny(Denial),
}

/// Why a guard refuses.
#[derive(Debug, Clone, PartialEq)]
pub struct Denial {
    /// Machine-readable reason.
    pub code: String,
    /// For people.
    pub message: String,
    /// Structured details.
    pub details: Value,
}

/// Starts a denial with a machine-readable `code`:
/// `deny("amount-over-limit").message("...").detail("max", 1000).into()`.
pub fn deny(code: impl Into<String>) -> Denial {
    Denial {
        code: code.into(),
        message: String::new(),
        details: Value::Null,
    }
}

impl Denial {
    /// Sets the human-readable message.
    pub fn message(mut self, message: impl Into<String>) -> Self {
        self.message = message.into();
        self
    }

    /// Adds one field to the details object.
    pub fn detail(mut self, key: &str, value: impl Into<Value>) -> Self {
        if !self.details.is_object() {
            self.details = Value::Object(Default::default());
        }
        self.details[key] = value.into();
        self
    }
}

impl From<Denial> for Decision {
    fn from(d: Denial) -> Self {
        Decision::Deny(d)
    }
}

/// A host call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// Nothing with that id.
    NotFound(String),
    /// A malformed request.
    Invalid(String),
    /// Storage could not answer in time.
    Unavailable(String),
    /// A limit of this call would be exceeded.
    Limit(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::NotFound(m) => write!(f, "not found: {m}"),
            Error::Invalid(m) => write!(f, "invalid: {m}"),
            Error::Unavailable(m) => write!(f, "unavailable: {m}"),
            Error::Limit(m) => write!(f, "limit: {m}"),
        }
    }
}

impl std::error::Error for Error {}

/// Implement for a guard; export with [`export_guard!`].
pub trait Guard {
    /// Decides whether the transition may fire. Keep it free of side
    /// effects: it may run more than once per firing.
    fn evaluate(ctx: GuardContext) -> Decision;
}

/// Implement for an action; export with [`export_action!`].
pub trait Action {
    /// Runs after the transition committed. An `Err` makes the host retry
    /// later; use `ctx.event_sequence` to make repeats harmless.
    fn run(ctx: ActionContext) -> Result<(), String>;
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

fn time(t: types::Timestamp) -> SystemTime {
    if t.seconds >= 0 {
        SystemTime::UNIX_EPOCH + Duration::new(t.seconds as u64, t.nanoseconds)
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(t.seconds.unsigned_abs())
    }
}

fn token(t: types::Token) -> Token {
    Token {
        id: t.id,
        workflow_id: t.workflow_id,
        definition_version: t.definition_version,
        place: t.place,
        marking: t.marking,
        data: json(&t.data),
        metadata: t.metadata.into_iter().collect(),
        revision: t.revision,
        created_at: time(t.created_at),
        updated_at: time(t.updated_at),
    }
}

fn transition(t: types::TransitionInfo) -> TransitionInfo {
    TransitionInfo {
        id: t.id,
        from: t.from,
        join: t.join,
        to: t.to,
        split: t.split,
        cancel: t.cancel,
    }
}

fn error(e: types::Error) -> Error {
    match e {
        types::Error::NotFound(m) => Error::NotFound(m),
        types::Error::Invalid(m) => Error::Invalid(m),
        types::Error::Unavailable(m) => Error::Unavailable(m),
        types::Error::Limit(m) => Error::Limit(m),
    }
}

/// Read-only access to workflow state.
pub mod reader {
    use super::*;

    /// A live token of a workflow.
    pub fn get_token(workflow_id: &str, token_id: &str) -> Result<Token, Error> {
        token_reader::get_token(workflow_id, token_id)
            .map(token)
            .map_err(error)
    }

    /// One page of the tokens in a place, and the cursor of the next page.
    pub fn list_place(
        workflow_id: &str,
        place: &str,
        cursor: Option<u64>,
        limit: u32,
    ) -> Result<(Vec<Token>, Option<u64>), Error> {
        let page = token_reader::list_place(workflow_id, place, cursor, limit).map_err(error)?;
        Ok((page.tokens.into_iter().map(token).collect(), page.next))
    }

    /// Every token in a place (pages through it).
    pub fn list_place_all(workflow_id: &str, place: &str) -> Result<Vec<Token>, Error> {
        let mut out = Vec::new();
        let mut cursor = None;
        loop {
            let (tokens, next) = list_place(workflow_id, place, cursor, 500)?;
            out.extend(tokens);
            match next {
                Some(n) => cursor = Some(n),
                None => return Ok(out),
            }
        }
    }

    /// The latest definition of a workflow.
    pub fn get_workflow(workflow_id: &str) -> Result<Workflow, Error> {
        let w = token_reader::get_workflow(workflow_id).map_err(error)?;
        Ok(Workflow {
            id: w.id,
            name: w.name,
            version: w.version,
            places: w.places,
            initial_place: w.initial_place,
            final_places: w.final_places,
            transitions: w.transitions.into_iter().map(transition).collect(),
        })
    }
}

/// Logging into the host's logs (tagged with the plugin's name and digest).
pub mod log {
    use super::wit_log::{Level, log};

    /// Debug line.
    pub fn debug(message: &str) {
        log(Level::Debug, message)
    }
    /// Info line.
    pub fn info(message: &str) {
        log(Level::Info, message)
    }
    /// Warning line.
    pub fn warn(message: &str) {
        log(Level::Warn, message)
    }
    /// Error line.
    pub fn error(message: &str) {
        log(Level::Error, message)
    }
}

/// Follow-up firings (actions only).
#[cfg(feature = "action")]
pub mod transitions {
    use super::*;

    /// Asks the host to fire `transition` on a token after this action
    /// succeeds; guards and compare-and-swap apply as for any firing.
    pub fn request(workflow_id: &str, token_id: &str, transition: &str, input: &Value) -> Result<(), Error> {
        bindings::circuit_breaker::plugin::transitions::request(
            workflow_id,
            token_id,
            transition,
            &input.to_string(),
        )
        .map_err(error)
    }
}

#[doc(hidden)]
pub mod __private {
    use super::*;

    #[cfg(feature = "guard")]
    pub fn evaluate<G: Guard>(ctx: types::GuardContext) -> types::Decision {
        let ctx = GuardContext {
            token: token(ctx.token),
            transition: transition(ctx.transition),
            config: json(&ctx.config),
            input: json(&ctx.input),
            actor: ctx.actor,
            fired_at: time(ctx.fired_at),
        };
        match G::evaluate(ctx) {
            Decision::Allow => types::Decision::Allow,
            Decision::Deny(d) => types::Decision::Deny(types::Denial {
                code: d.code,
                message: d.message,
                details: d.details.to_string(),
            }),
        }
    }

    #[cfg(feature = "action")]
    pub fn run<A: Action>(ctx: types::ActionContext) -> Result<(), String> {
        A::run(ActionContext {
            event_sequence: ctx.event_sequence,
            token: token(ctx.token),
            transition: transition(ctx.transition),
            from: ctx.from,
            to: ctx.to,
            consumed: ctx.consumed,
            produced: ctx.produced,
            cancelled: ctx.cancelled,
            actor: ctx.actor,
            input: json(&ctx.input),
            config: json(&ctx.config),
            fired_at: time(ctx.fired_at),
        })
    }
}

/// Exports a [`Guard`] implementation as the component's `evaluate`.
#[cfg(feature = "guard")]
#[macro_export]
macro_rules! export_guard {
    ($ty:ty) => {
        struct __CbGuardExport;
        impl $crate::bindings::Guest for __CbGuardExport {
            fn evaluate(ctx: $crate::bindings::GuardContext) -> $crate::bindings::Decision {
                $crate::__private::evaluate::<$ty>(ctx)
            }
        }
        $crate::bindings::__export_world!(__CbGuardExport with_types_in $crate::bindings);
    };
}

/// Exports an [`Action`] implementation as the component's `run`.
#[cfg(feature = "action")]
#[macro_export]
macro_rules! export_action {
    ($ty:ty) => {
        struct __CbActionExport;
        impl $crate::bindings::Guest for __CbActionExport {
            fn run(ctx: $crate::bindings::ActionContext) -> Result<(), String> {
                $crate::__private::run::<$ty>(ctx)
            }
        }
        $crate::bindings::__export_world!(__CbActionExport with_types_in $crate::bindings);
    };
}
