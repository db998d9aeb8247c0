//! A YAML document as a tree that remembers where every node stood in the file.
//!
//! serde_yaml stops at the first error and forgets positions; SPEC §3 wants every
//! error listed with its line and column, so the config is decoded from this tree.

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A 1-based position in the source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Mark {
    pub line: usize,
    pub col: usize,
}

impl Mark {
    fn from_marker(m: &Marker) -> Self {
        // yaml-rust2 counts lines from 1 and columns from 0.
        Mark {
            line: m.line(),
            col: m.col() + 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum NodeKind {
    /// A scalar; `plain` is false for quoted and block scalars (`"true"` is a string).
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub kind: NodeKind,
    pub mark: Mark,
}

impl Node {
    /// `~`, `null` or an empty plain scalar.
    pub fn is_null(&self) -> bool {
        matches!(&self.kind, NodeKind::Scalar { text, plain: true }
            if text.is_empty() || text == "~" || text == "null" || text == "Null" || text == "NULL")
    }

    /// The text of a scalar, for keys and messages.
    pub fn scalar_text(&self) -> Option<&str> {
        match &self.kind {
            NodeKind::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    /// What kind of node this is, for "expected a list, found a single value".
    /// Never the text itself: it may be a key written where a list was expected.
    pub fn describe(&self) -> &'static str {
        match &self.kind {
            NodeKind::Scalar { .. } if self.is_null() => "nothing (null)",
            NodeKind::Scalar { .. } => "a single value",
            NodeKind::Seq(_) => "a list",
            NodeKind::Map(_) => "a mapping",
        }
    }
}

/// A YAML syntax error with its position.
#[derive(Debug, Clone)]
pub struct SyntaxError {
    pub mark: Mark,
    pub message: String,
}

/// Parses the first document of `source`; an empty file is an empty mapping.
pub fn parse(source: &str) -> Result<Node, SyntaxError> {
    let mut builder = TreeBuilder::default();
    let mut parser = Parser::new_from_str(source);
    parser.load(&mut builder, false).map_err(|e| SyntaxError {
        mark: Mark::from_marker(e.marker()),
        message: e.info().to_string(),
    })?;
    if let Some(message) = builder.error {
        return Err(SyntaxError {
            mark: builder.error_mark,
            message,
        });
    }
    Ok(builder.root.unwrap_or(Node {
        kind: NodeKind::Map(Vec::new()),
        mark: Mark { line: 1, col: 1 },
    }))
}

/// Builds the tree from parser events; anchors are resolved by copying the node.
#[derive(Default)]
struct TreeBuilder {
    stack: Vec<(Node, usize)>,
    /// A mapping key waiting for its value, per open mapping.
    pending_keys: Vec<Option<Node>>,
    anchors: Vec<(usize, Node)>,
    root: Option<Node>,
    error: Option<String>,
    error_mark: Mark,
}

impl TreeBuilder {
    fn push_value(&mut self, node: Node, anchor: usize) {
        if anchor > 0 {
            self.anchors.push((anchor, node.clone()));
        }
        match self.stack.last_mut() {
            None => {
                if self.root.is_none() {
                    self.root = Some(node);
                }
            }
            Some((parent, _)) => match &mut parent.kind {
                NodeKind::Seq(items) => items.push(node),
                NodeKind::Map(entries) => {
                    let slot = self
                        .pending_keys
                        .last_mut()
                        .expect("a key slot per mapping");
                    match slot.take() {
                        None => *slot = Some(node),
                        Some(key) => entries.push((key, node)),
                    }
                }
                NodeKind::Scalar { .. } => unreachable!("scalars are never pushed on the stack"),
            },
        }
    }

    fn open(&mut self, kind: NodeKind, anchor: usize, mark: Marker) {
        if matches!(kind, NodeKind::Map(_)) {
            self.pending_keys.push(None);
        }
        self.stack.push((
            Node {
                kind,
                mark: Mark::from_marker(&mark),
            },
            anchor,
        ));
    }

    fn close(&mut self) {
        if let Some((mut node, anchor)) = self.stack.pop() {
            if let NodeKind::Map(entries) = &node.kind {
                self.pending_keys.pop();
                // yaml-rust2 marks a block mapping at its first `:`; its first key
                // is where a reader sees it start.
                if let Some((first_key, _)) = entries.first() {
                    let key = (first_key.mark.line, first_key.mark.col);
                    if key < (node.mark.line, node.mark.col) {
                        node.mark = first_key.mark;
                    }
                }
            }
            self.push_value(node, anchor);
        }
    }
}

impl MarkedEventReceiver for TreeBuilder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(text, style, anchor, _tag) => {
                let node = Node {
                    kind: NodeKind::Scalar {
                        text,
                        plain: style == TScalarStyle::Plain,
                    },
                    mark: Mark::from_marker(&mark),
                };
                self.push_value(node, anchor);
            }
            Event::SequenceStart(anchor, _) => self.open(NodeKind::Seq(Vec::new()), anchor, mark),
            Event::MappingStart(anchor, _) => self.open(NodeKind::Map(Vec::new()), anchor, mark),
            Event::SequenceEnd | Event::MappingEnd => self.close(),
            Event::Alias(id) => match self.anchors.iter().rev().find(|(a, _)| *a == id) {
                Some((_, node)) => {
                    let mut node = node.clone();
                    node.mark = Mark::from_marker(&mark);
                    self.push_value(node, 0);
                }
                None if self.error.is_none() => {
                    self.error = Some("alias to an unknown anchor".to_string());
                    self.error_mark = Mark::from_marker(&mark);
                }
                None => {}
            },
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_lines_and_columns() {
        let doc = parse("a: 1\nlist:\n  - x: \"y\"\n").expect("valid yaml");
        let NodeKind::Map(entries) = &doc.kind else {
            panic!("expected a map")
        };
        assert_eq!(entries[0].0.mark, Mark { line: 1, col: 1 });
        assert_eq!(entries[0].1.mark, Mark { line: 1, col: 4 });
        let NodeKind::Seq(items) = &entries[1].1.kind else {
            panic!("expected a list")
        };
        let NodeKind::Map(inner) = &items[0].kind else {
            panic!("expected a map")
        };
        assert_eq!(inner[0].0.mark, Mark { line: 3, col: 5 });
        assert_eq!(
            inner[0].1.kind,
            NodeKind::Scalar {
                text: "y".into(),
                plain: false
            }
        );
    }

    #[test]
    fn syntax_errors_carry_a_position() {
        let err = parse("a: [1, 2\nb: 3\n").expect_err("unclosed list");
        assert!(err.mark.line >= 1);
    }

    #[test]
    fn aliases_copy_the_anchored_node() {
        let doc = parse("x: &h {a: 1}\ny: *h\n").expect("valid yaml");
        let NodeKind::Map(entries) = &doc.kind else {
            panic!("expected a map")
        };
        assert!(matches!(entries[1].1.kind, NodeKind::Map(ref m) if m.len() == 1));
    }
}
