//! Workflow definitions: places, transitions, and the plugins that guard them.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use super::Id;

/// A workflow: a Petri net of places and transitions. A token is one case;
/// its **marking** is the set of places it occupies (at most one mark per
/// place: a 1-safe net), one place for a sequential workflow, several after
/// a parallel split.
///
/// Parsed with unknown fields rejected, so a typo in a definition file is an
/// error rather than a silently ignored setting. Call
/// [`validate`](Self::validate) (done by [`parse`](Self::parse)) before
/// storing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct WorkflowDefinition {
    /// Subject-safe id, unique per stream.
    pub id: Id,
    /// Human-readable name; defaults to the id.
    #[serde(default)]
    pub name: String,
    /// Free text for people reading the definition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Every place a token may occupy.
    pub places: Vec<Id>,
    /// Where new tokens start.
    pub initial_place: Id,
    /// Places that end a case: a firing that leaves every mark of a token
    /// in them (or no mark at all) completes the token in the same atomic
    /// batch (implicit termination). Without any, a token completes when
    /// its marking becomes empty or by an explicit `complete`.
    #[serde(rename = "final", default, skip_serializing_if = "Vec::is_empty")]
    pub final_places: Vec<Id>,
    /// The transitions.
    pub transitions: Vec<Transition>,
}

/// One transition. Its **inputs** are `from` (enabled when the token is
/// marked in *any one* of them; consumes that mark) or `join` (an AND-join:
/// enabled only when marked in *every* one; consumes all of them). Its
/// **outputs** are `to` (marks one place) or `split` (an AND-split: marks
/// every one of them), or neither (the transition only consumes). `cancel`
/// names places whose marks it clears if present (reset arcs), e.g. a
/// timeout that cancels outstanding reviews.
///
/// ```json
/// { "id": "review", "from": ["submitted"], "split": ["legal", "finance"] }
/// { "id": "approve", "join": ["legal_ok", "finance_ok"], "to": "approved" }
/// { "id": "reject", "from": ["legal", "finance"], "to": "rejected", "cancel": ["legal", "finance", "legal_ok", "finance_ok"] }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct Transition {
    /// Unique within the definition.
    pub id: Id,
    /// Enabled when marked in any one of these (consumes that mark, the
    /// first marked one in this order).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<Id>,
    /// AND-join: enabled only when marked in every one of these (consumes
    /// them all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub join: Vec<Id>,
    /// The place it marks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Id>,
    /// AND-split: every place it marks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub split: Vec<Id>,
    /// Places whose marks it clears, where present (reset arcs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cancel: Vec<Id>,
    /// Plugins that must all allow the firing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub guards: Vec<PluginRef>,
    /// Plugins run (at least once) after the firing is committed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<PluginRef>,
}

/// What a firing does to a marking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firing {
    /// Marks it consumes.
    pub consumed: Vec<Id>,
    /// Places it marks.
    pub produced: Vec<Id>,
    /// Marks its reset arcs clear (of those present, not consumed).
    pub cancelled: Vec<Id>,
    /// The marking after it, in the definition's place order.
    pub marking: Vec<Id>,
}

/// Why a transition cannot fire on a marking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotFirable {
    /// Its inputs are not marked.
    NotEnabled,
    /// It would mark a place that stays marked: two marks in one place
    /// (the net is not 1-safe there).
    Unsafe(Id),
}

impl Transition {
    /// A sequential transition: from `from` (any one) to `to`.
    pub fn simple(id: Id, from: Vec<Id>, to: Id) -> Self {
        Transition {
            id,
            from,
            join: Vec::new(),
            to: Some(to),
            split: Vec::new(),
            cancel: Vec::new(),
            guards: Vec::new(),
            actions: Vec::new(),
        }
    }

    /// Its input places (`from` or `join`).
    pub fn inputs(&self) -> &[Id] {
        if self.join.is_empty() {
            &self.from
        } else {
            &self.join
        }
    }

    /// Its output places (`to` or `split`).
    pub fn outputs(&self) -> &[Id] {
        match &self.to {
            Some(to) => std::slice::from_ref(to),
            None => &self.split,
        }
    }

    /// Whether it may fire on `marking`, and what it does then: the marks
    /// it consumes, produces and clears, and the marking after it (in the
    /// order of `places`, the definition's).
    pub fn fire(&self, marking: &[Id], places: &[Id]) -> Result<Firing, NotFirable> {
        let marked = |p: &Id| marking.contains(p);
        let consumed: Vec<Id> = if self.join.is_empty() {
            match self.from.iter().find(|p| marked(p)) {
                Some(p) => vec![p.clone()],
                None => return Err(NotFirable::NotEnabled),
            }
        } else if self.join.iter().all(marked) {
            self.join.clone()
        } else {
            return Err(NotFirable::NotEnabled);
        };
        let cancelled: Vec<Id> = self
            .cancel
            .iter()
            .filter(|p| marked(p) && !consumed.contains(p))
            .cloned()
            .collect();
        let produced = self.outputs().to_vec();
        let left = |p: &Id| marked(p) && !consumed.contains(p) && !cancelled.contains(p);
        if let Some(p) = produced.iter().find(|p| left(p)) {
            return Err(NotFirable::Unsafe(p.clone()));
        }
        let marking = places
            .iter()
            .filter(|p| left(p) || produced.contains(p))
            .cloned()
            .collect();
        Ok(Firing {
            consumed,
            produced,
            cancelled,
            marking,
        })
    }

    /// Its arcs for people: `a|b -> c` (any one of), `a&b -> c` (join),
    /// `a -> b&c` (split), `-> (nothing)`, then `, cancels x, y`.
    pub fn arcs(&self) -> String {
        let join = |v: &[Id], sep: &str| v.iter().map(Id::as_str).collect::<Vec<_>>().join(sep);
        let inputs = if self.join.is_empty() {
            join(&self.from, "|")
        } else {
            join(&self.join, "&")
        };
        let outputs = match (&self.to, self.split.is_empty()) {
            (Some(to), _) => to.to_string(),
            (None, false) => join(&self.split, "&"),
            (None, true) => "(nothing)".into(),
        };
        let mut s = format!("{inputs} -> {outputs}");
        if !self.cancel.is_empty() {
            s.push_str(&format!(", cancels {}", join(&self.cancel, ", ")));
        }
        s
    }

    /// Whether a token marked in `place` is waiting on this transition.
    pub fn takes_from(&self, place: &str) -> bool {
        self.inputs().iter().any(|p| p == place)
    }
}

/// A guard or action: the plugin's name and the config it is given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct PluginRef {
    /// Name of a loaded plugin (its file stem).
    pub plugin: Id,
    /// Plugin-specific configuration, passed to the plugin as JSON.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub config: serde_json::Value,
    /// Optional `sha256:<hex>` pin: the definition only runs this exact build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Limits for this use of the plugin instead of the host's defaults
    /// (e.g. more memory for a Python guard), each at most the host's
    /// maximum: checked when the definition is applied.
    #[serde(default, skip_serializing_if = "LimitOverrides::is_empty")]
    pub limits: LimitOverrides,
    /// Workflows other than its own that this use of the plugin may read
    /// (`token-reader`) or, for an action, fire follow-ups in. Without a
    /// grant a plugin reaches only the workflow it was called for.
    #[serde(default, skip_serializing_if = "Grants::is_empty")]
    pub grants: Grants,
}

/// Per-plugin-reference limits over the host's defaults. Every field is
/// optional; names and units are those of the plugin runtime's limits
/// (`deadline` in milliseconds, sizes in bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct LimitOverrides {
    /// Wall-clock deadline of one call, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<u64>,
    /// Fuel of one call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    /// Largest linear memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<usize>,
    /// Data `token-reader` may hand the plugin in one call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_data_bytes: Option<usize>,
    /// Log output of one call (every line also costs a fixed charge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_bytes: Option<usize>,
    /// Follow-up requests of one action call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<usize>,
    /// A denial's code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_bytes: Option<usize>,
    /// A denial's message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_bytes: Option<usize>,
    /// A denial's details (JSON text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details_bytes: Option<usize>,
    /// Nesting depth of a denial's details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details_depth: Option<usize>,
    /// An action's error text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_bytes: Option<usize>,
    /// The input of one follow-up request (JSON text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_bytes: Option<usize>,
}

impl LimitOverrides {
    /// Whether nothing is overridden.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Workflows a plugin reference may reach beyond the one it runs for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct Grants {
    /// Workflows whose tokens and definition it may read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read: Vec<Id>,
    /// Workflows it may request follow-up firings in (actions only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fire: Vec<Id>,
}

impl Grants {
    /// Whether nothing is granted.
    pub fn is_empty(&self) -> bool {
        self.read.is_empty() && self.fire.is_empty()
    }
}

/// Why a definition was refused. Each variant names what is wrong and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DefinitionError {
    /// Not valid JSON, a missing or unknown field, a bad id, a wrong type.
    #[error("invalid definition at `{path}`: {message}")]
    Parse {
        /// JSON path of the bad value (`.` for the document itself).
        path: String,
        /// What serde reported.
        message: String,
    },
    /// `places` is empty.
    #[error("definition `{0}` has no places")]
    NoPlaces(Id),
    /// `transitions` is empty: no token could ever move.
    #[error("definition `{0}` has no transitions")]
    NoTransitions(Id),
    /// A place is listed twice.
    #[error("place `{0}` is listed more than once")]
    DuplicatePlace(Id),
    /// Two transitions share an id.
    #[error("transition id `{0}` is used more than once")]
    DuplicateTransition(Id),
    /// `initial_place` is not in `places`.
    #[error("initial place `{0}` is not one of the places")]
    UnknownInitialPlace(Id),
    /// A transition's `from` or `to` is not in `places`.
    #[error("transition `{transition}` refers to unknown place `{place}`")]
    UnknownPlace {
        /// The transition.
        transition: Id,
        /// The place it names.
        place: Id,
    },
    /// A transition has neither `from` nor `join`.
    #[error("transition `{0}` has an empty `from` list")]
    EmptyFrom(Id),
    /// A transition lists the same `from` place twice.
    #[error("transition `{transition}` lists `from` place `{place}` more than once")]
    DuplicateFrom {
        /// The transition.
        transition: Id,
        /// The repeated place.
        place: Id,
    },
    /// A combination the schema refuses (`from` with `join`, `to` with
    /// `split`, a place both joined and cancelled, an unknown final
    /// place...), at a JSON path.
    #[error("invalid definition at `{path}`: {message}")]
    Refused {
        /// JSON path of the bad value.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A guard was granted `fire`: only actions request follow-up firings.
    #[error(
        "transition `{transition}`: guard `{plugin}` is granted `fire`, but guards cannot fire transitions"
    )]
    GuardCannotFire {
        /// The transition.
        transition: Id,
        /// The guard plugin.
        plugin: Id,
    },
    /// A digest pin is not `sha256:` followed by 64 lowercase hex digits.
    #[error(
        "transition `{transition}`: plugin `{plugin}` has a malformed digest {digest:?} (want sha256:<64 hex>)"
    )]
    BadDigest {
        /// The transition.
        transition: Id,
        /// The plugin.
        plugin: Id,
        /// What was given.
        digest: String,
    },
}

impl WorkflowDefinition {
    /// Parses JSON text and validates the result. Errors name the JSON path of
    /// the bad field.
    pub fn parse(json: &[u8]) -> Result<Self, DefinitionError> {
        let mut de = serde_json::Deserializer::from_slice(json);
        let mut def: WorkflowDefinition =
            serde_path_to_error::deserialize(&mut de).map_err(|e| DefinitionError::Parse {
                path: e.path().to_string(),
                message: e.inner().to_string(),
            })?;
        // Exactly one JSON value: `{...} }{ junk` is not a definition.
        de.end().map_err(|e| DefinitionError::Parse {
            path: ".".into(),
            message: format!("data after the definition: {e}"),
        })?;
        if def.name.is_empty() {
            def.name = def.id.to_string();
        }
        def.validate()?;
        Ok(def)
    }

    /// Checks the structural rules: places unique and non-empty, transitions
    /// unique with non-empty `from`, every referenced place exists.
    ///
    /// Cycles are allowed on purpose: rework loops (`rejected -> draft`) are
    /// ordinary workflows.
    pub fn validate(&self) -> Result<(), DefinitionError> {
        if self.places.is_empty() {
            return Err(DefinitionError::NoPlaces(self.id.clone()));
        }
        let mut places = HashSet::new();
        for p in &self.places {
            if !places.insert(p) {
                return Err(DefinitionError::DuplicatePlace(p.clone()));
            }
        }
        if !places.contains(&self.initial_place) {
            return Err(DefinitionError::UnknownInitialPlace(self.initial_place.clone()));
        }
        if self.transitions.is_empty() {
            return Err(DefinitionError::NoTransitions(self.id.clone()));
        }
        for (i, p) in self.final_places.iter().enumerate() {
            if !places.contains(p) {
                return Err(DefinitionError::Refused {
                    path: format!("final[{i}]"),
                    message: format!("`{p}` is not one of the places"),
                });
            }
        }
        let mut ids = HashSet::new();
        for (i, t) in self.transitions.iter().enumerate() {
            if !ids.insert(&t.id) {
                return Err(DefinitionError::DuplicateTransition(t.id.clone()));
            }
            let refuse = |field: &str, message: String| DefinitionError::Refused {
                path: format!("transitions[{i}].{field}"),
                message,
            };
            if !t.from.is_empty() && !t.join.is_empty() {
                return Err(refuse(
                    "join",
                    "a transition has `from` (any one of) or `join` (all of), not both".into(),
                ));
            }
            if t.to.is_some() && !t.split.is_empty() {
                return Err(refuse(
                    "split",
                    "a transition has `to` (one place) or `split` (every one of), not both".into(),
                ));
            }
            if t.inputs().is_empty() {
                return Err(DefinitionError::EmptyFrom(t.id.clone()));
            }
            for (field, list) in [
                ("from", &t.from),
                ("join", &t.join),
                ("split", &t.split),
                ("cancel", &t.cancel),
            ] {
                let mut seen = HashSet::new();
                for p in list {
                    if !seen.insert(p) {
                        if field == "from" {
                            return Err(DefinitionError::DuplicateFrom {
                                transition: t.id.clone(),
                                place: p.clone(),
                            });
                        }
                        return Err(refuse(field, format!("lists `{p}` more than once")));
                    }
                }
            }
            if t.join.len() == 1 {
                return Err(refuse(
                    "join",
                    "a join of one place is `from`: write `\"from\": [...]`".into(),
                ));
            }
            if t.split.len() == 1 {
                return Err(refuse(
                    "split",
                    "a split into one place is `to`: write `\"to\": ...`".into(),
                ));
            }
            if let Some(p) = t.outputs().iter().find(|p| t.cancel.contains(p)) {
                return Err(refuse(
                    "cancel",
                    format!("`{p}` is both marked and cancelled by the transition: name it in one of them"),
                ));
            }
            if let Some(p) = t.join.iter().find(|p| t.cancel.contains(p)) {
                return Err(refuse(
                    "cancel",
                    format!("`{p}` is both joined (consumed) and cancelled: name it in one of them"),
                ));
            }
            for p in t.inputs().iter().chain(t.outputs()).chain(&t.cancel) {
                if !places.contains(p) {
                    return Err(DefinitionError::UnknownPlace {
                        transition: t.id.clone(),
                        place: p.clone(),
                    });
                }
            }
            for g in &t.guards {
                if !g.grants.fire.is_empty() {
                    return Err(DefinitionError::GuardCannotFire {
                        transition: t.id.clone(),
                        plugin: g.plugin.clone(),
                    });
                }
            }
            for r in t.guards.iter().chain(&t.actions) {
                if let Some(d) = &r.digest
                    && !is_sha256_digest(d)
                {
                    return Err(DefinitionError::BadDigest {
                        transition: t.id.clone(),
                        plugin: r.plugin.clone(),
                        digest: d.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// The transition with id `id`.
    pub fn transition(&self, id: &str) -> Option<&Transition> {
        self.transitions.iter().find(|t| t.id == id)
    }

    /// Whether `place` is one of the definition's places.
    pub fn has_place(&self, place: &str) -> bool {
        self.places.iter().any(|p| p == place)
    }

    /// Transitions that take a mark from `place`.
    pub fn transitions_from<'a>(&'a self, place: &'a str) -> impl Iterator<Item = &'a Transition> {
        self.transitions.iter().filter(move |t| t.takes_from(place))
    }

    /// Transitions whose inputs `marking` satisfies (guards aside).
    pub fn transitions_enabled_in<'a>(&'a self, marking: &'a [Id]) -> impl Iterator<Item = &'a Transition> {
        self.transitions
            .iter()
            .filter(move |t| t.fire(marking, &self.places).is_ok())
    }

    /// Whether a token with `marking` is done: no marks left, or (with
    /// final places declared) every mark in a final place.
    pub fn is_final(&self, marking: &[Id]) -> bool {
        marking.is_empty()
            || (!self.final_places.is_empty() && marking.iter().all(|p| self.final_places.contains(p)))
    }

    /// `marking` in the order of `places`.
    pub fn ordered(&self, marking: &[Id]) -> Vec<Id> {
        self.places
            .iter()
            .filter(|p| marking.contains(p))
            .cloned()
            .collect()
    }
}

fn is_sha256_digest(d: &str) -> bool {
    d.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// A definition as stored: the definition plus the stream sequence it was
/// stored at. Tokens pin the version they started on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct StoredDefinition {
    /// The stream sequence of the stored definition message.
    pub version: u64,
    /// When the server stored it.
    #[serde(with = "time::serde::rfc3339")]
    pub stored_at: time::OffsetDateTime,
    /// The definition itself.
    pub definition: WorkflowDefinition,
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPENSE: &str = r#"{ "id": "expense-approval", "name": "Expense approval",
      "places": ["draft", "submitted", "approved", "rejected", "paid"],
      "initial_place": "draft",
      "transitions": [
        { "id": "submit", "from": ["draft"], "to": "submitted",
          "guards": [{ "plugin": "require-fields", "config": { "fields": ["/amount", "/owner"] } }] },
        { "id": "approve", "from": ["submitted"], "to": "approved",
          "guards": [{ "plugin": "amount-limit", "config": { "max": 1000 } }],
          "actions": [{ "plugin": "auto-advance", "config": { "transition": "pay" } }] },
        { "id": "reject", "from": ["submitted"], "to": "rejected" },
        { "id": "rework", "from": ["rejected"], "to": "draft" },
        { "id": "pay", "from": ["approved"], "to": "paid" } ] }"#;

    fn with(f: impl FnOnce(&mut serde_json::Value)) -> Result<WorkflowDefinition, DefinitionError> {
        let mut v: serde_json::Value = serde_json::from_str(EXPENSE).unwrap();
        f(&mut v);
        WorkflowDefinition::parse(v.to_string().as_bytes())
    }

    #[test]
    fn parses_the_design_example_with_a_cycle() {
        let d = WorkflowDefinition::parse(EXPENSE.as_bytes()).unwrap();
        assert_eq!(d.id, "expense-approval");
        assert_eq!(d.transition("approve").unwrap().actions[0].plugin, "auto-advance");
        assert_eq!(d.transitions_from("submitted").count(), 2);
    }

    #[test]
    fn errors_name_the_path_of_the_bad_field() {
        let e = with(|v| v["transitions"][1]["guards"][0]["plugn"] = "x".into()).unwrap_err();
        match e {
            DefinitionError::Parse { path, message } => {
                assert_eq!(path, "transitions[1].guards[0].plugn");
                assert!(message.contains("unknown field"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        let e = with(|v| v["places"][2] = "appro.ved".into()).unwrap_err();
        assert!(
            matches!(&e, DefinitionError::Parse { path, .. } if path == "places[2]"),
            "{e:?}"
        );
        let e = WorkflowDefinition::parse(b"{not json").unwrap_err();
        assert!(matches!(e, DefinitionError::Parse { .. }));
    }

    #[test]
    fn structural_errors_are_typed() {
        assert_eq!(
            with(|v| v["places"][1] = "draft".into()).unwrap_err(),
            DefinitionError::DuplicatePlace(Id::new("draft").unwrap())
        );
        assert_eq!(
            with(|v| v["initial_place"] = "nowhere".into()).unwrap_err(),
            DefinitionError::UnknownInitialPlace(Id::new("nowhere").unwrap())
        );
        assert!(matches!(
            with(|v| v["transitions"][2]["to"] = "nowhere".into()).unwrap_err(),
            DefinitionError::UnknownPlace { transition, place } if transition == "reject" && place == "nowhere"
        ));
        assert!(matches!(
            with(|v| v["transitions"][2]["id"] = "submit".into()).unwrap_err(),
            DefinitionError::DuplicateTransition(t) if t == "submit"
        ));
        assert!(matches!(
            with(|v| v["transitions"][0]["from"] = serde_json::json!([])).unwrap_err(),
            DefinitionError::EmptyFrom(_)
        ));
        assert!(matches!(
            with(|v| v["transitions"] = serde_json::json!([])).unwrap_err(),
            DefinitionError::NoTransitions(_)
        ));
        assert!(matches!(
            with(|v| v["transitions"][1]["guards"][0]["digest"] = "md5:00".into()).unwrap_err(),
            DefinitionError::BadDigest { .. }
        ));
    }

    #[test]
    fn deeply_nested_json_is_refused_not_a_stack_overflow() {
        let mut s = String::from(
            r#"{"id":"a","places":["p"],"initial_place":"p","transitions":[{"id":"t","from":["p"],"to":"p","guards":[{"plugin":"g","config":"#,
        );
        s.push_str(&"[".repeat(10_000));
        s.push_str(&"]".repeat(10_000));
        s.push_str("}]}]}");
        assert!(matches!(
            WorkflowDefinition::parse(s.as_bytes()),
            Err(DefinitionError::Parse { .. })
        ));
    }
    fn ids(v: &[&str]) -> Vec<Id> {
        v.iter().map(|s| Id::new(*s).unwrap()).collect()
    }

    const REVIEW: &str = r#"{ "id": "po", "name": "Purchase order",
      "places": ["submitted", "legal", "finance", "legal_ok", "finance_ok", "approved", "rejected"],
      "initial_place": "submitted", "final": ["approved", "rejected"],
      "transitions": [
        { "id": "review", "from": ["submitted"], "split": ["legal", "finance"] },
        { "id": "legal_ok", "from": ["legal"], "to": "legal_ok" },
        { "id": "finance_ok", "from": ["finance"], "to": "finance_ok" },
        { "id": "approve", "join": ["legal_ok", "finance_ok"], "to": "approved" },
        { "id": "reject", "from": ["legal", "finance"], "to": "rejected",
          "cancel": ["legal", "finance", "legal_ok", "finance_ok"] } ] }"#;

    #[test]
    fn split_join_and_cancel_fire_as_a_petri_net() {
        let d = WorkflowDefinition::parse(REVIEW.as_bytes()).unwrap();
        let t = |id: &str| d.transition(id).unwrap();
        let split = t("review").fire(&ids(&["submitted"]), &d.places).unwrap();
        assert_eq!(split.consumed, ids(&["submitted"]));
        assert_eq!(split.produced, ids(&["legal", "finance"]));
        assert_eq!(split.marking, ids(&["legal", "finance"]));
        // A join needs every input.
        assert_eq!(
            t("approve").fire(&ids(&["legal_ok", "finance"]), &d.places),
            Err(NotFirable::NotEnabled)
        );
        let join = t("approve")
            .fire(&ids(&["legal_ok", "finance_ok"]), &d.places)
            .unwrap();
        assert_eq!(join.consumed, ids(&["legal_ok", "finance_ok"]));
        assert_eq!(join.marking, ids(&["approved"]));
        assert!(d.is_final(&join.marking));
        // `from` consumes one mark; cancel clears the others that are there.
        let reject = t("reject")
            .fire(&ids(&["finance", "legal_ok"]), &d.places)
            .unwrap();
        assert_eq!(reject.consumed, ids(&["finance"]));
        assert_eq!(reject.cancelled, ids(&["legal_ok"]));
        assert_eq!(reject.marking, ids(&["rejected"]));
        // Marking a place that stays marked is refused (1-safe).
        assert_eq!(
            t("legal_ok").fire(&ids(&["legal", "legal_ok"]), &d.places),
            Err(NotFirable::Unsafe(Id::new("legal_ok").unwrap()))
        );
        assert!(!d.is_final(&ids(&["approved", "legal"])));
        assert_eq!(
            d.transitions_enabled_in(&ids(&["legal", "finance"]))
                .map(|t| t.id.as_str())
                .collect::<Vec<_>>(),
            ["legal_ok", "finance_ok", "reject"]
        );
    }

    #[test]
    fn old_definitions_keep_their_meaning() {
        let d = WorkflowDefinition::parse(EXPENSE.as_bytes()).unwrap();
        let f = d
            .transition("approve")
            .unwrap()
            .fire(&ids(&["submitted"]), &d.places)
            .unwrap();
        assert_eq!(f.marking, ids(&["approved"]));
        // No final places: only an empty marking ends a case by itself.
        assert!(!d.is_final(&ids(&["paid"])));
        // Serialized as before: no new fields appear.
        let text = serde_json::to_string(&d).unwrap();
        for new in ["join", "split", "cancel", "final"] {
            assert!(!text.contains(&format!("\"{new}\"")), "{text}");
        }
        assert!(d.check_soundness().is_sound(), "{:?}", d.check_soundness());
    }

    #[test]
    fn ambiguous_combinations_are_refused_with_their_path() {
        let refused = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut v: serde_json::Value = serde_json::from_str(REVIEW).unwrap();
            f(&mut v);
            match WorkflowDefinition::parse(v.to_string().as_bytes()) {
                Err(DefinitionError::Refused { path, .. }) => path,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(
            refused(&|v| v["transitions"][3]["from"] = serde_json::json!(["legal"])),
            "transitions[3].join"
        );
        assert_eq!(
            refused(&|v| v["transitions"][0]["to"] = "legal".into()),
            "transitions[0].split"
        );
        assert_eq!(
            refused(&|v| v["transitions"][0]["split"] = serde_json::json!(["legal"])),
            "transitions[0].split"
        );
        assert_eq!(
            refused(&|v| v["transitions"][3]["join"] = serde_json::json!(["legal_ok"])),
            "transitions[3].join"
        );
        assert_eq!(
            refused(&|v| v["transitions"][3]["cancel"] = serde_json::json!(["legal_ok"])),
            "transitions[3].cancel"
        );
        assert_eq!(
            refused(&|v| v["transitions"][4]["cancel"] = serde_json::json!(["rejected"])),
            "transitions[4].cancel"
        );
        assert_eq!(
            refused(&|v| v["transitions"][0]["split"] = serde_json::json!(["legal", "legal"])),
            "transitions[0].split"
        );
        assert_eq!(
            refused(&|v| v["final"] = serde_json::json!(["nowhere"])),
            "final[0]"
        );
        let mut v: serde_json::Value = serde_json::from_str(REVIEW).unwrap();
        v["transitions"][4]["cancel"] = serde_json::json!(["nowhere"]);
        assert!(matches!(
            WorkflowDefinition::parse(v.to_string().as_bytes()),
            Err(DefinitionError::UnknownPlace { place, .. }) if place == "nowhere"
        ));
    }

    fn soundness(text: &str) -> crate::model::SoundnessReport {
        WorkflowDefinition::parse(text.as_bytes())
            .unwrap()
            .check_soundness()
    }

    fn codes(r: &crate::model::SoundnessReport) -> Vec<(crate::model::FindingCode, String)> {
        r.findings
            .iter()
            .map(|f| {
                let about = f
                    .transition
                    .as_ref()
                    .or(f.place.as_ref())
                    .map(Id::to_string)
                    .unwrap_or_default();
                (f.code, about)
            })
            .collect()
    }

    #[test]
    fn a_sound_net_has_no_findings() {
        let r = soundness(REVIEW);
        assert!(r.complete);
        assert!(r.findings.is_empty(), "{r:?}");
        // {submitted} {legal,finance} {legal_ok,finance} {legal,finance_ok}
        // {legal_ok,finance_ok} {approved} {rejected}
        assert_eq!(r.markings, 7);
    }

    #[test]
    fn dead_parts_are_errors_and_stuck_runs_warnings_with_a_trace() {
        use crate::model::FindingCode::*;
        // `approve` joins `legal_ok` with `finance_ok`, but nothing marks
        // `finance_ok` any more: dead, never marked, and a run stuck in
        // {legal_ok, finance}.
        let mut v: serde_json::Value = serde_json::from_str(REVIEW).unwrap();
        v["transitions"][2]["to"] = "finance".into();
        let r = soundness(&v.to_string());
        let found = codes(&r);
        assert!(found.contains(&(DeadTransition, "approve".into())), "{found:?}");
        assert!(
            found.contains(&(UnreachablePlace, "finance_ok".into())),
            "{found:?}"
        );
        assert!(
            found.contains(&(UnreachablePlace, "approved".into())),
            "{found:?}"
        );
        assert!(!r.is_sound());
        // `reject` still ends every run: no warnings.
        assert!(r.warnings().next().is_none(), "{r:?}");

        // A branch that can only go round.
        let round = r#"{ "id": "x", "name": "x", "places": ["a", "b", "c"], "initial_place": "a",
          "final": ["b"], "transitions": [
            { "id": "finish", "from": ["a"], "to": "b" },
            { "id": "park", "from": ["a"], "to": "c" },
            { "id": "spin", "from": ["c"], "to": "c" } ] }"#;
        let r = soundness(round);
        let f = r
            .findings
            .iter()
            .find(|f| f.code == NoCompletion)
            .expect("a livelock");
        assert_eq!(f.severity, crate::model::Severity::Warning);
        assert_eq!(
            (f.marking.clone(), f.trace.clone()),
            (ids(&["c"]), ids(&["park"]))
        );
        assert!(r.is_sound());

        // A join that waits for a branch an exclusive choice did not take.
        let stuck = r#"{ "id": "x", "name": "x", "places": ["a", "b", "c", "d"], "initial_place": "a",
          "final": ["d"], "transitions": [
            { "id": "left", "from": ["a"], "to": "b" },
            { "id": "right", "from": ["a"], "to": "c" },
            { "id": "both", "join": ["b", "c"], "to": "d" },
            { "id": "fallback", "from": ["b"], "to": "d" } ] }"#;
        let r = soundness(stuck);
        let dead = codes(&r);
        assert!(dead.contains(&(DeadTransition, "both".into())), "{dead:?}");
        let lock = r
            .findings
            .iter()
            .find(|f| f.code == Deadlock)
            .expect("stuck in c");
        assert_eq!(lock.marking, ids(&["c"]));
        assert_eq!(lock.trace, ids(&["right"]));

        // Two marks in one place.
        let doubled = r#"{ "id": "x", "name": "x", "places": ["a", "b", "c", "d"], "initial_place": "a",
          "transitions": [
            { "id": "fork", "from": ["a"], "split": ["b", "c"] },
            { "id": "merge", "from": ["b", "c"], "to": "d" } ] }"#;
        let r = soundness(doubled);
        let f = r.findings.iter().find(|f| f.code == Unsafe).expect("unsafe");
        assert_eq!(f.place.as_ref().map(Id::as_str), Some("d"));
        assert_eq!(f.trace, ids(&["fork", "merge"]));
        assert!(r.is_sound(), "guards may keep it from happening: a warning");
    }

    #[test]
    fn the_search_is_bounded_and_says_so() {
        // 12 independent branches: 2^12 markings after the split.
        let n = 12;
        let mut places = vec!["start".to_string()];
        let mut transitions = vec![];
        let mut split = vec![];
        for i in 0..n {
            places.push(format!("todo{i}"));
            places.push(format!("done{i}"));
            split.push(format!("todo{i}"));
            transitions.push(serde_json::json!({"id": format!("do{i}"), "from": [format!("todo{i}")], "to": format!("done{i}")}));
        }
        transitions.push(serde_json::json!({"id": "go", "from": ["start"], "split": split}));
        let def = serde_json::json!({"id": "wide", "name": "wide", "places": places, "initial_place": "start",
            "final": (0..n).map(|i| format!("done{i}")).collect::<Vec<_>>(), "transitions": transitions});
        let d = WorkflowDefinition::parse(def.to_string().as_bytes()).unwrap();
        let full = d.check_soundness();
        assert!(full.complete && full.findings.is_empty(), "{full:?}");
        assert_eq!(full.markings, 1 + (1 << n));
        let cut = d.check_soundness_bounded(100);
        assert!(!cut.complete);
        assert_eq!(cut.markings, 100);
        assert_eq!(
            codes(&cut),
            vec![(crate::model::FindingCode::SearchBound, String::new())]
        );
    }
}
