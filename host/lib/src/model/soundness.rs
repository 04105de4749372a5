//! Soundness: what a definition's net can do, before any token runs on it.
//!
//! The check explores the net's reachability graph from the initial
//! marking (one mark in `initial_place`), firing every enabled transition
//! with the same rule the engine fires with ([`Transition::fire`]) and
//! ignoring guards: a guard only ever stops a firing, so what cannot happen
//! without guards cannot happen with them. Markings are sets of places (the
//! net is 1-safe), so the graph is finite; the exploration still stops at a
//! bound on the number of markings and says so.
//!
//! What it reports follows van der Aalst's soundness of workflow nets:
//!
//! - errors, for what can never work: a transition no reachable marking
//!   enables (dead), a place no reachable marking marks, declared final
//!   places no case can reach;
//! - warnings, for what some run can run into: a deadlock (a marking that
//!   enables nothing and is not an end), a firing that would put two marks
//!   in one place (the host refuses it), and (with final places declared) a
//!   marking from which no end is reachable at all.
//!
//! A marking is an end when it is final ([`WorkflowDefinition::is_final`]),
//! or, in a definition that declares no final places (a state machine whose
//! tokens are completed explicitly), when every mark sits in a place no
//! transition leaves.

use std::collections::{HashMap, HashSet, VecDeque};

use serde::{Deserialize, Serialize};

use super::Id;
use super::definition::{NotFirable, WorkflowDefinition};

/// How many markings [`WorkflowDefinition::check_soundness`] explores at
/// most: 1-safe nets of the size people draw stay far below it.
pub const DEFAULT_MAX_MARKINGS: usize = 10_000;

/// How many examples of one kind of warning a report lists.
const EXAMPLES: usize = 3;

/// The outcome of a soundness check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SoundnessReport {
    /// Markings explored.
    pub markings: usize,
    /// Whether every reachable marking was explored (else the bound cut
    /// the search, and dead or unreachable parts are not reported).
    pub complete: bool,
    /// What was found, errors first.
    pub findings: Vec<Finding>,
}

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub enum Severity {
    /// Can never work: the definition is refused at apply.
    Error,
    /// Some run may run into it (guards may keep it from happening).
    Warning,
}

/// What a finding is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub enum FindingCode {
    /// No reachable marking enables the transition.
    DeadTransition,
    /// No reachable marking marks the place.
    UnreachablePlace,
    /// Final places are declared, but no reachable marking is final.
    FinalUnreachable,
    /// A reachable marking enables nothing and is not an end.
    Deadlock,
    /// A reachable firing would mark a place already marked.
    Unsafe,
    /// From a reachable marking, no end is reachable (a livelock).
    NoCompletion,
    /// The search stopped at its bound.
    SearchBound,
}

impl FindingCode {
    /// Its name, as in JSON (`dead-transition`, ...).
    pub fn as_str(&self) -> &'static str {
        match self {
            FindingCode::DeadTransition => "dead-transition",
            FindingCode::UnreachablePlace => "unreachable-place",
            FindingCode::FinalUnreachable => "final-unreachable",
            FindingCode::Deadlock => "deadlock",
            FindingCode::Unsafe => "unsafe",
            FindingCode::NoCompletion => "no-completion",
            FindingCode::SearchBound => "search-bound",
        }
    }
}

/// One finding, with a run that shows it where there is one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "http", derive(utoipa::ToSchema))]
pub struct Finding {
    /// Error or warning.
    pub severity: Severity,
    /// What kind.
    pub code: FindingCode,
    /// For people.
    pub message: String,
    /// The transition it is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transition: Option<Id>,
    /// The place it is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub place: Option<Id>,
    /// The marking it happens in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub marking: Vec<Id>,
    /// The transitions that lead there from the initial marking, in order
    /// (a shortest such run).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trace: Vec<Id>,
}

impl SoundnessReport {
    /// The errors: the definition can never work as written.
    pub fn errors(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| f.severity == Severity::Error)
    }

    /// The warnings.
    pub fn warnings(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| f.severity == Severity::Warning)
    }

    /// No errors.
    pub fn is_sound(&self) -> bool {
        self.errors().next().is_none()
    }
}

fn list(places: &[Id]) -> String {
    if places.is_empty() {
        return "no place".into();
    }
    places
        .iter()
        .map(|p| format!("`{p}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl WorkflowDefinition {
    /// Checks the net (see the module docs), exploring at most
    /// [`DEFAULT_MAX_MARKINGS`] markings.
    pub fn check_soundness(&self) -> SoundnessReport {
        self.check_soundness_bounded(DEFAULT_MAX_MARKINGS)
    }

    /// [`check_soundness`](Self::check_soundness) with its own bound.
    pub fn check_soundness_bounded(&self, max_markings: usize) -> SoundnessReport {
        let max_markings = max_markings.max(1);
        let places = &self.places;
        let mut states: Vec<Vec<Id>> = vec![vec![self.initial_place.clone()]];
        let mut index: HashMap<Vec<Id>, usize> = HashMap::from([(states[0].clone(), 0)]);
        // How each marking was first reached: (from, transition index).
        let mut parent: Vec<Option<(usize, usize)>> = vec![None];
        let mut successors: Vec<Vec<usize>> = vec![Vec::new()];
        let mut end = vec![false];
        let mut fired = vec![false; self.transitions.len()];
        let mut complete = true;
        let mut deadlocks = Vec::new();
        let mut unsafe_seen = HashSet::new();
        let mut unsafe_found = Vec::new();
        let sink = |p: &Id| !self.transitions.iter().any(|t| t.takes_from(p.as_str()));
        let mut queue = VecDeque::from([0usize]);
        while let Some(i) = queue.pop_front() {
            let marking = states[i].clone();
            if self.is_final(&marking) {
                end[i] = true;
                continue;
            }
            let mut enabled = false;
            for (ti, t) in self.transitions.iter().enumerate() {
                match t.fire(&marking, places) {
                    Ok(f) => {
                        enabled = true;
                        fired[ti] = true;
                        let j = match index.get(&f.marking) {
                            Some(&j) => j,
                            None if states.len() >= max_markings => {
                                complete = false;
                                continue;
                            }
                            None => {
                                let j = states.len();
                                index.insert(f.marking.clone(), j);
                                states.push(f.marking);
                                parent.push(Some((i, ti)));
                                successors.push(Vec::new());
                                end.push(false);
                                queue.push_back(j);
                                j
                            }
                        };
                        successors[i].push(j);
                    }
                    Err(NotFirable::Unsafe(p)) => {
                        if unsafe_seen.insert((ti, p.clone())) {
                            unsafe_found.push((i, ti, p));
                        }
                    }
                    Err(NotFirable::NotEnabled) => {}
                }
            }
            if !enabled {
                if self.final_places.is_empty() && marking.iter().all(sink) {
                    end[i] = true;
                } else {
                    deadlocks.push(i);
                }
            }
        }

        let trace = |mut i: usize| {
            let mut out = Vec::new();
            while let Some((from, t)) = parent[i] {
                out.push(self.transitions[t].id.clone());
                i = from;
            }
            out.reverse();
            out
        };
        let mut findings = Vec::new();
        if complete {
            for (t, _) in self.transitions.iter().zip(&fired).filter(|(_, f)| !**f) {
                findings.push(Finding {
                    severity: Severity::Error,
                    code: FindingCode::DeadTransition,
                    message: format!(
                        "transition `{}` can never fire: no reachable marking marks {} {}",
                        t.id,
                        if t.join.is_empty() { "any of" } else { "all of" },
                        list(t.inputs())
                    ),
                    transition: Some(t.id.clone()),
                    place: None,
                    marking: Vec::new(),
                    trace: Vec::new(),
                });
            }
            let reached: HashSet<&Id> = states.iter().flatten().collect();
            for p in places.iter().filter(|p| !reached.contains(p)) {
                findings.push(Finding {
                    severity: Severity::Error,
                    code: FindingCode::UnreachablePlace,
                    message: format!(
                        "place `{p}` is never marked: no run from `{}` reaches it",
                        self.initial_place
                    ),
                    transition: None,
                    place: Some(p.clone()),
                    marking: Vec::new(),
                    trace: Vec::new(),
                });
            }
            if !self.final_places.is_empty() && !states.iter().any(|m| self.is_final(m)) {
                findings.push(Finding {
                    severity: Severity::Error,
                    code: FindingCode::FinalUnreachable,
                    message: format!(
                        "no case can end: no reachable marking has its marks only in the final places {}",
                        list(&self.final_places)
                    ),
                    transition: None,
                    place: None,
                    marking: Vec::new(),
                    trace: Vec::new(),
                });
            }
        }
        for &i in deadlocks.iter().take(EXAMPLES) {
            findings.push(Finding {
                severity: Severity::Warning,
                code: FindingCode::Deadlock,
                message: format!(
                    "deadlock: a token marked in {} can fire nothing and is not done",
                    list(&states[i])
                ),
                transition: None,
                place: None,
                marking: states[i].clone(),
                trace: trace(i),
            });
        }
        for (i, ti, p) in unsafe_found.into_iter().take(EXAMPLES) {
            let t = &self.transitions[ti];
            findings.push(Finding {
                severity: Severity::Warning,
                code: FindingCode::Unsafe,
                message: format!(
                    "transition `{}` would mark `{p}` twice from the marking {} (the host refuses such a firing)",
                    t.id,
                    list(&states[i])
                ),
                transition: Some(t.id.clone()),
                place: Some(p),
                marking: states[i].clone(),
                trace: trace(i),
            });
        }
        if complete && !self.final_places.is_empty() {
            // Markings an end is reachable from: backwards from the ends.
            let mut predecessors = vec![Vec::new(); states.len()];
            for (i, succ) in successors.iter().enumerate() {
                for &j in succ {
                    predecessors[j].push(i);
                }
            }
            let mut can_end = end.clone();
            let mut back: VecDeque<usize> = (0..states.len()).filter(|&i| end[i]).collect();
            while let Some(j) = back.pop_front() {
                for &i in &predecessors[j] {
                    if !can_end[i] {
                        can_end[i] = true;
                        back.push_back(i);
                    }
                }
            }
            let stuck: HashSet<usize> = deadlocks.iter().copied().collect();
            let livelocks = (0..states.len()).filter(|i| !can_end[*i] && !stuck.contains(i));
            for i in livelocks.take(EXAMPLES) {
                findings.push(Finding {
                    severity: Severity::Warning,
                    code: FindingCode::NoCompletion,
                    message: format!(
                        "from the marking {}, no run reaches a final marking (the case can only go round)",
                        list(&states[i])
                    ),
                    transition: None,
                    place: None,
                    marking: states[i].clone(),
                    trace: trace(i),
                });
            }
        }
        if !complete {
            findings.push(Finding {
                severity: Severity::Warning,
                code: FindingCode::SearchBound,
                message: format!(
                    "explored {} markings and stopped at the bound: dead transitions and unreachable places are not checked",
                    states.len()
                ),
                transition: None,
                place: None,
                marking: Vec::new(),
                trace: Vec::new(),
            });
        }
        findings.sort_by_key(|f| f.severity == Severity::Warning);
        SoundnessReport {
            markings: states.len(),
            complete,
            findings,
        }
    }
}
