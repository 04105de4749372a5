//! Drawing a definition's net: places as circles (final places double),
//! transitions as boxes naming their guards and actions, cancel (reset)
//! arcs dashed. Mermaid (renders in GitHub and most docs tools) or
//! Graphviz DOT.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::{Id, WorkflowDefinition};

/// The text format of a diagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DiagramFormat {
    /// A Mermaid `flowchart`.
    #[default]
    Mermaid,
    /// A Graphviz `digraph`.
    Dot,
}

impl std::str::FromStr for DiagramFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "mermaid" => Ok(DiagramFormat::Mermaid),
            "dot" => Ok(DiagramFormat::Dot),
            other => Err(format!("unknown diagram format `{other}`: mermaid or dot")),
        }
    }
}

/// What a diagram shows in its places.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Overlay {
    /// The initial marking (a mark in the initial place).
    #[default]
    Initial,
    /// One token's marking.
    Marking(Vec<Id>),
    /// How many live tokens are marked in each place.
    Counts(BTreeMap<Id, usize>),
}

struct Node {
    label: String,
    marked: bool,
    last: bool,
}

impl WorkflowDefinition {
    /// The net as a diagram in `format`, with `overlay` on its places.
    pub fn diagram(&self, format: DiagramFormat, overlay: &Overlay) -> String {
        let place = |p: &Id| {
            let (mark, marked) = match overlay {
                Overlay::Initial if *p == self.initial_place => (" ●".to_string(), true),
                Overlay::Initial => (String::new(), false),
                Overlay::Marking(m) if m.contains(p) => (" ●".to_string(), true),
                Overlay::Marking(_) => (String::new(), false),
                Overlay::Counts(c) => match c.get(p).copied().unwrap_or(0) {
                    0 => (String::new(), false),
                    n => (format!(" ({n})"), true),
                },
            };
            Node {
                label: format!("{p}{mark}"),
                marked,
                last: self.final_places.contains(p),
            }
        };
        let places: Vec<Node> = self.places.iter().map(place).collect();
        let index = |p: &Id| self.places.iter().position(|q| q == p).expect("validated");
        let transitions: Vec<Vec<String>> = self
            .transitions
            .iter()
            .map(|t| {
                let mut lines = vec![t.id.to_string()];
                let names = |refs: &[super::PluginRef]| {
                    refs.iter()
                        .map(|r| r.plugin.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                if !t.guards.is_empty() {
                    lines.push(format!("guards: {}", names(&t.guards)));
                }
                if !t.actions.is_empty() {
                    lines.push(format!("actions: {}", names(&t.actions)));
                }
                lines
            })
            .collect();
        // (transition, place, kind): kind 0 input, 1 any-one input, 2
        // output, 3 cancel.
        let mut arcs = Vec::new();
        for (ti, t) in self.transitions.iter().enumerate() {
            let any = t.join.is_empty() && t.from.len() > 1;
            for p in t.inputs() {
                arcs.push((ti, index(p), if any { 1 } else { 0 }));
            }
            for p in t.outputs() {
                arcs.push((ti, index(p), 2));
            }
            for p in &t.cancel {
                arcs.push((ti, index(p), 3));
            }
        }
        let mut out = String::new();
        match format {
            DiagramFormat::Mermaid => {
                let _ = writeln!(out, "flowchart LR");
                for (i, n) in places.iter().enumerate() {
                    let (open, close) = if n.last { ("(((", ")))") } else { ("((", "))") };
                    let _ = writeln!(out, "  p{i}{open}\"{}\"{close}", n.label);
                }
                for (i, lines) in transitions.iter().enumerate() {
                    let _ = writeln!(out, "  t{i}[\"{}\"]", lines.join("<br/>"));
                }
                for &(t, p, kind) in &arcs {
                    let _ = match kind {
                        0 => writeln!(out, "  p{p} --> t{t}"),
                        1 => writeln!(out, "  p{p} -- any --> t{t}"),
                        2 => writeln!(out, "  t{t} --> p{p}"),
                        _ => writeln!(out, "  t{t} -. cancels .-> p{p}"),
                    };
                }
                let _ = writeln!(out, "  classDef transition fill:#eef2ff,stroke:#4338ca");
                let _ = writeln!(
                    out,
                    "  classDef marked fill:#fde68a,stroke:#b45309,stroke-width:2px"
                );
                let ts: Vec<String> = (0..transitions.len()).map(|i| format!("t{i}")).collect();
                if !ts.is_empty() {
                    let _ = writeln!(out, "  class {} transition", ts.join(","));
                }
                let marked: Vec<String> = (0..places.len())
                    .filter(|i| places[*i].marked)
                    .map(|i| format!("p{i}"))
                    .collect();
                if !marked.is_empty() {
                    let _ = writeln!(out, "  class {} marked", marked.join(","));
                }
            }
            DiagramFormat::Dot => {
                let _ = writeln!(out, "digraph \"{}\" {{", self.id);
                let _ = writeln!(out, "  rankdir=LR;");
                let _ = writeln!(out, "  node [fontname=\"Helvetica\", fontsize=11];");
                for (i, n) in places.iter().enumerate() {
                    let shape = if n.last { "doublecircle" } else { "circle" };
                    let fill = if n.marked {
                        ", style=filled, fillcolor=\"#fde68a\""
                    } else {
                        ""
                    };
                    let _ = writeln!(out, "  p{i} [shape={shape}, label=\"{}\"{fill}];", n.label);
                }
                for (i, lines) in transitions.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "  t{i} [shape=box, style=filled, fillcolor=\"#eef2ff\", label=\"{}\"];",
                        lines.join("\\n")
                    );
                }
                for &(t, p, kind) in &arcs {
                    let _ = match kind {
                        0 => writeln!(out, "  p{p} -> t{t};"),
                        1 => writeln!(out, "  p{p} -> t{t} [label=\"any\"];"),
                        2 => writeln!(out, "  t{t} -> p{p};"),
                        _ => writeln!(
                            out,
                            "  t{t} -> p{p} [style=dashed, arrowhead=tee, label=\"cancels\"];"
                        ),
                    };
                }
                let _ = writeln!(out, "}}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PO: &str = include_str!("../../../../examples/workflows/purchase-order.json");

    #[test]
    fn mermaid_draws_places_transitions_and_every_kind_of_arc() {
        let d = WorkflowDefinition::parse(PO.as_bytes()).unwrap();
        let m = d.diagram(DiagramFormat::Mermaid, &Overlay::Initial);
        assert!(m.starts_with("flowchart LR\n"), "{m}");
        assert!(m.contains("p0((\"draft ●\"))"), "{m}");
        assert!(
            m.contains("p6(((\"ordered\")))"),
            "final places are double circles: {m}"
        );
        assert!(m.contains("t0[\"submit<br/>guards: require-fields\"]"), "{m}");
        assert!(m.contains("t5[\"approve<br/>actions: auto-advance\"]"), "{m}");
        // submit splits into both reviews; approve joins both oks.
        assert!(m.contains("t0 --> p1") && m.contains("t0 --> p2"), "{m}");
        assert!(m.contains("p3 --> t5") && m.contains("p4 --> t5"), "{m}");
        assert!(m.contains("t3 -. cancels .-> p2"), "{m}");
        assert!(m.contains("class p0 marked"), "{m}");
    }

    #[test]
    fn dot_shows_a_tokens_marking_or_the_counts() {
        let d = WorkflowDefinition::parse(PO.as_bytes()).unwrap();
        let id = |s: &str| Id::new(s).unwrap();
        let g = d.diagram(
            DiagramFormat::Dot,
            &Overlay::Marking(vec![id("legal_ok"), id("finance_review")]),
        );
        assert!(g.starts_with("digraph \"purchase-order\" {"), "{g}");
        assert!(
            g.contains("p3 [shape=circle, label=\"legal_ok ●\", style=filled"),
            "{g}"
        );
        assert!(
            g.contains("p2 [shape=circle, label=\"finance_review ●\", style=filled"),
            "{g}"
        );
        assert!(g.contains("p0 [shape=circle, label=\"draft\"];"), "{g}");
        assert!(g.contains("t4 -> p1 [style=dashed, arrowhead=tee"), "{g}");
        let counts = Overlay::Counts(BTreeMap::from([(id("draft"), 3)]));
        let g = d.diagram(DiagramFormat::Dot, &counts);
        assert!(g.contains("label=\"draft (3)\""), "{g}");
        assert_eq!(g.matches('{').count(), g.matches('}').count());
    }
}
