//! Workflow definitions: places, transitions, and the plugins that guard them.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use super::Id;

/// A Petri-net style workflow: tokens sit in places and move along
/// transitions.
///
/// Parsed with unknown fields rejected, so a typo in a definition file is an
/// error rather than a silently ignored setting. Call
/// [`validate`](Self::validate) (done by [`parse`](Self::parse)) before
/// storing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
    /// The moves between places.
    pub transitions: Vec<Transition>,
}

/// One transition: moves a token from any place in `from` to `to`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transition {
    /// Unique within the definition.
    pub id: Id,
    /// Places the token may be in for the transition to be enabled; not empty.
    pub from: Vec<Id>,
    /// The place the token moves to.
    pub to: Id,
    /// Plugins that must all allow the firing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub guards: Vec<PluginRef>,
    /// Plugins run (at least once) after the firing is committed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<PluginRef>,
}

/// A guard or action: the plugin's name and the config it is given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginRef {
    /// Name of a loaded plugin (its file stem).
    pub plugin: Id,
    /// Plugin-specific configuration, passed to the plugin as JSON.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub config: serde_json::Value,
    /// Optional `sha256:<hex>` pin: the definition only runs this exact build.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
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
    /// A transition has an empty `from` list.
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
        let de = &mut serde_json::Deserializer::from_slice(json);
        let mut def: WorkflowDefinition =
            serde_path_to_error::deserialize(de).map_err(|e| DefinitionError::Parse {
                path: e.path().to_string(),
                message: e.inner().to_string(),
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
        let mut ids = HashSet::new();
        for t in &self.transitions {
            if !ids.insert(&t.id) {
                return Err(DefinitionError::DuplicateTransition(t.id.clone()));
            }
            if t.from.is_empty() {
                return Err(DefinitionError::EmptyFrom(t.id.clone()));
            }
            let mut seen = HashSet::new();
            for p in &t.from {
                if !seen.insert(p) {
                    return Err(DefinitionError::DuplicateFrom {
                        transition: t.id.clone(),
                        place: p.clone(),
                    });
                }
            }
            for p in t.from.iter().chain(std::iter::once(&t.to)) {
                if !places.contains(p) {
                    return Err(DefinitionError::UnknownPlace {
                        transition: t.id.clone(),
                        place: p.clone(),
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

    /// Transitions that can start from `place`.
    pub fn transitions_from<'a>(&'a self, place: &'a str) -> impl Iterator<Item = &'a Transition> {
        self.transitions
            .iter()
            .filter(move |t| t.from.iter().any(|p| p == place))
    }
}

fn is_sha256_digest(d: &str) -> bool {
    d.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// A definition as stored: the definition plus the stream sequence it was
/// stored at. Tokens pin the version they started on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
}
