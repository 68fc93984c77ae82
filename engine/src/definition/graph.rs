//! A process definition drawn as a graph, for people: Graphviz DOT or a Mermaid `flowchart`.
//!
//! [`Graph::of`] turns a [`ProcessDef`] into nodes and edges (one node per step, shaped by its
//! kind; an edge per `depends_on`, labelled with the route's condition where a gateway chooses
//! it; a dashed node and edge per compensating action), and [`Graph::dot`] / [`Graph::mermaid`]
//! write it out. Pure functions over the definition: nothing is read or checked here, so an
//! invalid definition still draws (the CLI validates first).
//!
//! Labels are user text (conditions, agent names), so both writers escape everything the
//! target syntax would otherwise read as its own: a label can never end a string, open a tag or
//! start a comment.

use std::fmt::Write as _;

use super::{FailurePolicy, OnError, ProcessDef, StepKind};

/// The output syntax.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Dot,
    Mermaid,
}

/// How a node is drawn: one shape per step kind, and one for compensating actions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    AgentTask,
    Gateway,
    Timer,
    Foreach,
    WaitSignal,
    Subprocess,
    /// An `http` step: a request out of the engine.
    Http,
    /// A `transform` step: data reshaped, no I/O.
    Transform,
    /// An `email` step.
    Email,
    /// A step's compensating action (its undo call), drawn dashed beside the step.
    Compensation,
}

impl Shape {
    fn of(kind: &StepKind) -> Shape {
        match kind {
            StepKind::AgentTask(_) => Shape::AgentTask,
            StepKind::Gateway(_) => Shape::Gateway,
            StepKind::Timer(_) => Shape::Timer,
            StepKind::Foreach(_) => Shape::Foreach,
            StepKind::WaitSignal(_) => Shape::WaitSignal,
            StepKind::Subprocess(_) => Shape::Subprocess,
            StepKind::Http(_) => Shape::Http,
            StepKind::Transform(_) => Shape::Transform,
            StepKind::Email(_) => Shape::Email,
        }
    }

    /// Graphviz attributes (after `shape=`); each kind looks different in black and white.
    fn dot(self) -> &'static str {
        match self {
            Shape::AgentTask => "box, style=rounded",
            Shape::Gateway => "diamond",
            Shape::Timer => "ellipse, peripheries=2",
            Shape::Foreach => "box3d",
            Shape::WaitSignal => "cds",
            Shape::Subprocess => "box, peripheries=2",
            Shape::Http => "component",
            Shape::Transform => "parallelogram",
            Shape::Email => "note",
            Shape::Compensation => "box, style=\"rounded,dashed\", color=firebrick",
        }
    }

    /// Mermaid's opening and closing brackets for the shape.
    fn mermaid(self) -> (&'static str, &'static str) {
        match self {
            Shape::AgentTask | Shape::Compensation => ("(", ")"),
            Shape::Gateway => ("{", "}"),
            Shape::Timer => ("((", "))"),
            Shape::Foreach => ("{{", "}}"),
            Shape::WaitSignal => (">", "]"),
            Shape::Subprocess => ("[[", "]]"),
            Shape::Http => ("[(", ")]"),
            Shape::Transform => ("[/", "/]"),
            Shape::Email => ("[\\", "/]"),
        }
    }
}

/// One node: a step, or a step's compensating action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// The step id, or `<step>#compensate` for a compensating action.
    pub id: String,
    /// The label's lines: the id, the kind, then what the step calls or waits for.
    pub lines: Vec<String>,
    pub shape: Shape,
}

/// Why an edge is there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EdgeKind {
    /// A `depends_on`: the target waits for the source.
    Flow,
    /// A step and its compensating action.
    Compensation,
}

/// One edge, by node ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Edge {
    pub from: String,
    pub to: String,
    /// A gateway route's condition (`default` for its default route), or `compensate`.
    pub label: Option<String>,
    pub kind: EdgeKind,
}

/// A definition as nodes and edges, in definition order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Graph {
    /// `name vN`, plus the failure policy when it compensates.
    pub title: String,
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
}

/// The suffix that names a step's compensation node (the engine's lane name for the same call).
const COMPENSATE_SUFFIX: &str = "#compensate";

impl Graph {
    pub fn of(def: &ProcessDef) -> Graph {
        let mut title = format!("{} v{}", def.name, def.version);
        if def.on_failure == FailurePolicy::Compensate {
            title.push_str(" (on failure: compensate)");
        }
        let mut nodes = Vec::with_capacity(def.steps.len());
        let mut edges = Vec::new();
        for step in &def.steps {
            let mut lines = vec![step.id.clone(), step.kind.name().to_string()];
            lines.extend(detail(&step.kind));
            nodes.push(Node {
                id: step.id.clone(),
                lines,
                shape: Shape::of(&step.kind),
            });
            for dep in &step.depends_on {
                let routes = def
                    .steps
                    .iter()
                    .find(|s| &s.id == dep)
                    .map(|s| route_labels(&s.kind, &step.id))
                    .unwrap_or_default();
                if routes.is_empty() {
                    edges.push(Edge {
                        from: dep.clone(),
                        to: step.id.clone(),
                        label: None,
                        kind: EdgeKind::Flow,
                    });
                }
                // One edge per route that leads here: each has its own condition.
                for label in routes {
                    edges.push(Edge {
                        from: dep.clone(),
                        to: step.id.clone(),
                        label: Some(label),
                        kind: EdgeKind::Flow,
                    });
                }
            }
            if let StepKind::AgentTask(task) = &step.kind {
                if let Some(undo) = &task.compensate {
                    let id = format!("{}{COMPENSATE_SUFFIX}", step.id);
                    nodes.push(Node {
                        id: id.clone(),
                        lines: vec![
                            format!("undo {}", step.id),
                            format!("agent: {}", undo.agent),
                        ],
                        shape: Shape::Compensation,
                    });
                    edges.push(Edge {
                        from: step.id.clone(),
                        to: id,
                        label: Some("compensate".to_string()),
                        kind: EdgeKind::Compensation,
                    });
                }
            }
        }
        Graph {
            title,
            nodes,
            edges,
        }
    }

    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Dot => self.dot(),
            Format::Mermaid => self.mermaid(),
        }
    }

    /// Graphviz DOT: a `digraph` whose node ids are the (quoted) step ids.
    pub fn dot(&self) -> String {
        let mut out = String::new();
        // `write!` to a String cannot fail.
        let _ = writeln!(out, "digraph {} {{", dot_quote(&self.title));
        let _ = writeln!(
            out,
            "  graph [label={}, labelloc=t, rankdir=TB];",
            dot_quote(&self.title)
        );
        let _ = writeln!(out, "  node [fontname=\"Helvetica\"];");
        let _ = writeln!(out, "  edge [fontname=\"Helvetica\", fontsize=10];");
        for node in &self.nodes {
            let label: Vec<String> = node.lines.iter().map(|l| dot_escape(l)).collect();
            let _ = writeln!(
                out,
                "  {} [label=\"{}\", shape={}];",
                dot_quote(&node.id),
                label.join("\\n"),
                node.shape.dot()
            );
        }
        for edge in &self.edges {
            let mut attrs = Vec::new();
            if let Some(label) = &edge.label {
                attrs.push(format!("label={}", dot_quote(label)));
            }
            if edge.kind == EdgeKind::Compensation {
                attrs.push("style=dashed, color=firebrick, arrowhead=empty".to_string());
            }
            let attrs = if attrs.is_empty() {
                String::new()
            } else {
                format!(" [{}]", attrs.join(", "))
            };
            let _ = writeln!(
                out,
                "  {} -> {}{attrs};",
                dot_quote(&edge.from),
                dot_quote(&edge.to)
            );
        }
        out.push_str("}\n");
        out
    }

    /// A Mermaid `flowchart`. Mermaid ids cannot be quoted, so nodes get generated ids
    /// (`n0`, `n1`, ... in node order) and the step id is the first line of the label.
    pub fn mermaid(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "flowchart TB");
        let _ = writeln!(out, "  %% {}", one_line(&self.title));
        let index = |id: &str| self.nodes.iter().position(|n| n.id == id);
        for (i, node) in self.nodes.iter().enumerate() {
            let (open, close) = node.shape.mermaid();
            let label: Vec<String> = node.lines.iter().map(|l| mermaid_escape(l)).collect();
            let _ = writeln!(out, "  n{i}{open}\"{}\"{close}", label.join("<br/>"));
        }
        for edge in &self.edges {
            // An edge to a step the definition lacks (an invalid definition) gets a node of
            // its own so the output still parses.
            let (Some(from), Some(to)) = (index(&edge.from), index(&edge.to)) else {
                let _ = writeln!(
                    out,
                    "  %% unknown step in edge {} -> {}",
                    one_line(&edge.from),
                    one_line(&edge.to)
                );
                continue;
            };
            let arrow = match edge.kind {
                EdgeKind::Flow => "-->",
                EdgeKind::Compensation => "-.->",
            };
            match &edge.label {
                Some(label) => {
                    let _ = writeln!(
                        out,
                        "  n{from} {arrow}|\"{}\"| n{to}",
                        mermaid_escape(label)
                    );
                }
                None => {
                    let _ = writeln!(out, "  n{from} {arrow} n{to}");
                }
            }
        }
        let compensations: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.shape == Shape::Compensation)
            .map(|(i, _)| format!("n{i}"))
            .collect();
        if !compensations.is_empty() {
            let _ = writeln!(
                out,
                "  classDef compensation stroke:#b22222,stroke-dasharray:5 5"
            );
            let _ = writeln!(out, "  class {} compensation", compensations.join(","));
        }
        out
    }
}

/// The label line under the kind: what the step calls, waits for or loops over, and an error
/// policy other than failing.
fn detail(kind: &StepKind) -> Vec<String> {
    let (what, on_error) = match kind {
        StepKind::AgentTask(t) => (format!("agent: {}", t.agent), t.on_error),
        StepKind::Gateway(g) => (
            format!(
                "{} route(s)",
                g.routes.len() + usize::from(!g.default.is_empty())
            ),
            OnError::Fail,
        ),
        StepKind::Timer(t) => (
            match (&t.duration, &t.until) {
                (Some(d), _) => format!("wait {d}"),
                (None, Some(until)) => format!("until {until}"),
                (None, None) => "wait".to_string(),
            },
            OnError::Fail,
        ),
        StepKind::Foreach(f) => (
            format!("each of {} -> agent: {}", f.items, f.agent),
            f.on_error,
        ),
        StepKind::WaitSignal(w) => (format!("signal: {}", w.signal), OnError::Fail),
        StepKind::Http(h) => (
            format!("{} {}", h.method.to_ascii_uppercase(), h.url),
            h.on_error,
        ),
        StepKind::Email(e) => (
            match &e.to {
                serde_json::Value::String(to) => format!("email to {to}"),
                _ => "email".to_string(),
            },
            e.on_error,
        ),
        StepKind::Transform(t) => (
            match &t.output {
                serde_json::Value::Object(fields) => format!("fields: {}", fields.len()),
                _ => "output".to_string(),
            },
            t.on_error,
        ),
        StepKind::Subprocess(s) => (
            match s.version {
                Some(v) => format!("process: {} v{v}", s.process),
                None => format!("process: {}", s.process),
            },
            s.on_error,
        ),
    };
    let mut lines = vec![what];
    if on_error != OnError::Fail {
        let policy = serde_json::to_value(on_error).expect("a unit enum serializes");
        lines.push(format!("on_error: {}", policy.as_str().unwrap_or("?")));
    }
    lines
}

/// The labels of the routes from gateway `kind` to `target`, in route order (empty when
/// `kind` is no gateway or no route leads there). Route numbers show the order in which the
/// conditions are tried when there are several.
fn route_labels(kind: &StepKind, target: &str) -> Vec<String> {
    let StepKind::Gateway(gateway) = kind else {
        return Vec::new();
    };
    let numbered = gateway.routes.len() > 1;
    let mut labels: Vec<String> = gateway
        .routes
        .iter()
        .enumerate()
        .filter(|(_, r)| r.to.iter().any(|t| t == target))
        .map(|(i, r)| {
            if numbered {
                format!("{}: {}", i + 1, r.when)
            } else {
                r.when.clone()
            }
        })
        .collect();
    if gateway.default.iter().any(|t| t == target) {
        labels.push("default".to_string());
    }
    labels
}

/// A DOT double-quoted string.
fn dot_quote(text: &str) -> String {
    format!("\"{}\"", dot_escape(text))
}

/// The inside of a DOT double-quoted string: quotes and backslashes escaped (so no `\n`, `\l`
/// escape of Graphviz's can come from the text), line breaks as Graphviz's `\n`.
fn dot_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// The inside of a Mermaid quoted label: every character Mermaid or its HTML labels would
/// read (a quote, `#` of its entity codes, tags, `%%` comments, the edge label's `|`,
/// markdown's backtick) as a decimal entity code, control characters as spaces.
fn mermaid_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' | '#' | '&' | '<' | '>' | '%' | '|' | '`' => {
                let _ = write!(out, "#{};", u32::from(c));
            }
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// Text for a Mermaid comment: on one line.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::{parse, Format as Source};

    fn graph(yaml: &str) -> Graph {
        Graph::of(&parse("p.yaml", yaml, Source::Yaml).unwrap())
    }

    const EVERY_KIND: &str = "name: every
steps:
  - {id: a, type: agent_task, agent: echo}
  - id: g
    type: gateway
    depends_on: [a]
    routes: [{when: 'input.x > 1', to: [t]}]
    default: [w]
  - {id: t, type: timer, duration: 5s, depends_on: [g]}
  - {id: w, type: wait_signal, signal: go, depends_on: [g]}
  - {id: f, type: foreach, items: '{{input.xs}}', agent: echo, depends_on: [t, w]}
  - {id: s, type: subprocess, process: child, depends_on: [f]}
";

    #[test]
    fn every_kind_has_its_own_shape_in_both_syntaxes() {
        let g = graph(EVERY_KIND);
        let shapes: Vec<Shape> = g.nodes.iter().map(|n| n.shape).collect();
        assert_eq!(
            shapes,
            [
                Shape::AgentTask,
                Shape::Gateway,
                Shape::Timer,
                Shape::WaitSignal,
                Shape::Foreach,
                Shape::Subprocess
            ]
        );
        let all = [
            Shape::AgentTask,
            Shape::Gateway,
            Shape::Timer,
            Shape::Foreach,
            Shape::WaitSignal,
            Shape::Subprocess,
            Shape::Http,
            Shape::Transform,
            Shape::Email,
            Shape::Compensation,
        ];
        let dot: std::collections::BTreeSet<_> = all.iter().map(|s| s.dot()).collect();
        assert_eq!(dot.len(), all.len(), "a DOT shape is shared");
        // The compensation node differs from an agent task by its class, not its brackets.
        let mermaid: std::collections::BTreeSet<_> = all[..9].iter().map(|s| s.mermaid()).collect();
        assert_eq!(mermaid.len(), 9, "a Mermaid shape is shared");

        let dot = g.dot();
        for line in [
            "\"a\" [label=\"a\\nagent_task\\nagent: echo\", shape=box, style=rounded];",
            "\"g\" [label=\"g\\ngateway\\n2 route(s)\", shape=diamond];",
            "\"t\" [label=\"t\\ntimer\\nwait 5s\", shape=ellipse, peripheries=2];",
            "\"w\" [label=\"w\\nwait_signal\\nsignal: go\", shape=cds];",
            "\"f\" [label=\"f\\nforeach\\neach of {{input.xs}} -> agent: echo\", shape=box3d];",
            "\"s\" [label=\"s\\nsubprocess\\nprocess: child\", shape=box, peripheries=2];",
        ] {
            assert!(dot.contains(line), "missing {line} in\n{dot}");
        }
        let mermaid = g.mermaid();
        for line in [
            "n0(\"a<br/>agent_task<br/>agent: echo\")",
            "n1{\"g<br/>gateway<br/>2 route(s)\"}",
            "n2((\"t<br/>timer<br/>wait 5s\"))",
            "n3>\"w<br/>wait_signal<br/>signal: go\"]",
            "n4{{\"f<br/>foreach<br/>each of {{input.xs}} -#62; agent: echo\"}}",
            "n5[[\"s<br/>subprocess<br/>process: child\"]]",
        ] {
            assert!(mermaid.contains(line), "missing {line} in\n{mermaid}");
        }
    }

    #[test]
    fn edges_follow_depends_on_and_routes_carry_their_condition() {
        let g = graph(EVERY_KIND);
        let edges: Vec<(&str, &str, Option<&str>)> = g
            .edges
            .iter()
            .map(|e| (e.from.as_str(), e.to.as_str(), e.label.as_deref()))
            .collect();
        assert_eq!(
            edges,
            [
                ("a", "g", None),
                ("g", "t", Some("input.x > 1")),
                ("g", "w", Some("default")),
                ("t", "f", None),
                ("w", "f", None),
                ("f", "s", None),
            ]
        );
        assert!(g
            .dot()
            .contains("  \"g\" -> \"t\" [label=\"input.x > 1\"];"));
        assert!(g.mermaid().contains("  n1 -->|\"input.x #62; 1\"| n2"));
        assert!(g.mermaid().contains("  n1 -->|\"default\"| n3"));
    }

    #[test]
    fn several_routes_are_numbered_in_the_order_they_are_tried() {
        let g = graph(
            "name: p\nsteps:\n  - id: g\n    type: gateway\n    routes: [{when: 'input.a', to: [x]}, {when: 'input.b', to: [x, y]}]\n  - {id: x, type: agent_task, agent: e, depends_on: [g]}\n  - {id: y, type: agent_task, agent: e, depends_on: [g]}\n",
        );
        let labels: Vec<_> = g.edges.iter().map(|e| e.label.as_deref()).collect();
        assert_eq!(
            labels,
            [Some("1: input.a"), Some("2: input.b"), Some("2: input.b")]
        );
    }

    #[test]
    fn quotes_and_backslashes_in_labels_are_escaped() {
        let g = graph(
            r#"name: 'say "hi"'
steps:
  - id: g
    type: gateway
    routes: [{when: 'input.s == "a\b" || input.t == "<b>#1%%"', to: [a]}]
  - {id: a, type: agent_task, agent: 'ec"ho', depends_on: [g]}
"#,
        );
        let dot = g.dot();
        assert!(
            dot.starts_with("digraph \"say \\\"hi\\\" v1\" {\n"),
            "{dot}"
        );
        assert!(
            dot.contains(r#"[label="input.s == \"a\\b\" || input.t == \"<b>#1%%\""]"#),
            "{dot}"
        );
        assert!(dot.contains(r#"agent: ec\"ho""#), "{dot}");
        let mermaid = g.mermaid();
        assert!(
            mermaid.contains(
                "|\"input.s == #34;a\\b#34; #124;#124; input.t == #34;#60;b#62;#35;1#37;#37;#34;\"|"
            ),
            "{mermaid}"
        );
        assert!(mermaid.contains("agent: ec#34;ho\""), "{mermaid}");
        // Nothing user-written leaves a quoted string: every quote in the output is ours.
        for line in mermaid
            .lines()
            .filter(|l| !l.trim_start().starts_with("%%"))
        {
            assert_eq!(line.matches('"').count() % 2, 0, "{line}");
        }
    }

    #[test]
    fn line_breaks_in_text_stay_inside_the_label() {
        let g = graph("name: p\nsteps:\n  - id: g\n    type: gateway\n    routes: [{when: \"input.a &&\\n input.b\", to: [a]}]\n  - {id: a, type: agent_task, agent: e, depends_on: [g]}\n");
        assert!(g.dot().contains("[label=\"input.a &&\\n input.b\"]"));
        assert!(g.mermaid().contains("|\"input.a #38;#38;  input.b\"|"));
        assert_eq!(g.mermaid().lines().count(), 5, "{}", g.mermaid());
    }

    #[test]
    fn compensation_is_a_dashed_node_and_edge_of_its_own() {
        let g = graph(
            "name: trip\non_failure: compensate\nsteps:\n  - id: book\n    type: agent_task\n    agent: hotels\n    compensate: {agent: hotels}\n  - {id: pay, type: agent_task, agent: cards, depends_on: [book], on_error: continue}\n",
        );
        assert_eq!(g.title, "trip v1 (on failure: compensate)");
        let undo = g.nodes.iter().find(|n| n.id == "book#compensate").unwrap();
        assert_eq!(undo.shape, Shape::Compensation);
        assert_eq!(undo.lines, ["undo book", "agent: hotels"]);
        let pay = g.nodes.iter().find(|n| n.id == "pay").unwrap();
        assert_eq!(pay.lines.last().unwrap(), "on_error: continue");
        let dot = g.dot();
        assert!(
            dot.contains("\"book\" -> \"book#compensate\" [label=\"compensate\", style=dashed"),
            "{dot}"
        );
        assert!(dot.contains("\"book#compensate\" [label=\"undo book\\nagent: hotels\", shape=box, style=\"rounded,dashed\""), "{dot}");
        let mermaid = g.mermaid();
        assert!(mermaid.contains("n0 -.->|\"compensate\"| n1"), "{mermaid}");
        assert!(mermaid.contains("class n1 compensation"), "{mermaid}");
    }

    #[test]
    fn an_edge_to_a_missing_step_still_renders() {
        let g =
            graph("name: p\nsteps:\n  - {id: a, type: agent_task, agent: e, depends_on: [nope]}\n");
        assert!(g.dot().contains("\"nope\" -> \"a\";"));
        assert!(g.mermaid().contains("%% unknown step in edge nope -> a"));
    }
}
