//! A YAML document as a tree that remembers where every node stood in the file.
//!
//! serde_yaml stops at the first error and forgets positions; SPEC §3 wants every
//! error listed with its line and column, so the config is decoded from this tree.

use std::collections::HashMap;
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

/// The deepest nesting of mappings and lists a config may have. A real config
/// is under ten levels deep; the bound keeps every recursive walk of the tree
/// (drop, clone, comparison, decoding) to a few KiB of stack, even on a reload
/// thread's small one.
pub const MAX_DEPTH: usize = 64;

/// The most nodes that alias expansion may copy into a document. Aliases are
/// expanded by copying, so a few nested anchors ("billion laughs") would
/// otherwise turn a small file into gigabytes; a real config copies a few
/// hundred nodes at most.
pub const MAX_ALIAS_NODES: usize = 100_000;

/// The most nodes the anchors may hold copies of, all together. An anchored
/// node is copied when it is defined (so that later aliases can copy it), and
/// anchors nested in anchors copy the same nodes again: without a bound, 64
/// nested anchors around a long list would hold 64 copies of it.
pub const MAX_ANCHORED_NODES: usize = 1_000_000;

/// How many nodes a scalar counts as in the bounds above: one, plus one for
/// every [`TEXT_PER_NODE`] bytes of its text, so that a long text aliased many
/// times is bounded by what it copies, not by its count of one node.
fn scalar_weight(text: &str) -> usize {
    1 + text.len() / TEXT_PER_NODE
}

/// The bytes of scalar text that count as one node (see [`scalar_weight`]):
/// aliases may then copy at most about 6 MB of text in all.
const TEXT_PER_NODE: usize = 64;

/// Why a document could not become a tree, and where.
#[derive(Debug, Clone)]
pub struct SyntaxError {
    pub mark: Mark,
    /// The whole message, e.g. `invalid YAML: ...` or `too deeply nested: ...`.
    pub message: String,
}

/// Parses the first document of `source`; an empty file is an empty mapping.
/// Refuses nesting deeper than [`MAX_DEPTH`] and alias expansion beyond
/// [`MAX_ALIAS_NODES`].
pub fn parse(source: &str) -> Result<Node, SyntaxError> {
    let mut builder = TreeBuilder::default();
    let mut parser = Parser::new_from_str(source);
    // The parser is driven one event at a time: its own `load` recurses once
    // per nesting level and overflows a small stack before any receiver could
    // refuse the depth. `next_token` keeps its state on the heap.
    loop {
        let (event, marker) = parser.next_token().map_err(|e| SyntaxError {
            mark: Mark::from_marker(e.marker()),
            // The scanner's own bound on flow nesting (`[[[...`, 255 levels)
            // can come first, as it reads ahead; it is the same refusal.
            message: match e.info() {
                "recursion limit exceeded" => too_deep(),
                info => format!("invalid YAML: {info}"),
            },
        })?;
        // Only the first document counts, as before.
        if matches!(event, Event::DocumentEnd | Event::StreamEnd) {
            break;
        }
        builder.on_event(event, marker);
        if let Some(error) = builder.error.take() {
            return Err(error);
        }
    }
    Ok(builder.root.unwrap_or(Node {
        kind: NodeKind::Map(Vec::new()),
        mark: Mark { line: 1, col: 1 },
    }))
}

fn too_deep() -> String {
    format!("too deeply nested: more than {MAX_DEPTH} levels of mappings and lists")
}

/// A mapping or list still open, with what it holds so far.
struct Frame {
    node: Node,
    anchor: usize,
    /// Nodes in this subtree, itself included (what an alias to it copies).
    nodes: usize,
}

/// Builds the tree from parser events; anchors are resolved by copying the node.
#[derive(Default)]
struct TreeBuilder {
    stack: Vec<Frame>,
    /// A mapping key waiting for its value, per open mapping.
    pending_keys: Vec<Option<Node>>,
    /// Anchored nodes by the parser's anchor id (unique per definition), with
    /// their node counts.
    anchors: HashMap<usize, (Node, usize)>,
    /// Nodes copied by aliases so far.
    copied: usize,
    /// Nodes copied into `anchors` so far.
    anchored: usize,
    root: Option<Node>,
    error: Option<SyntaxError>,
}

impl TreeBuilder {
    fn push_value(&mut self, node: Node, anchor: usize, nodes: usize) {
        if anchor > 0 {
            self.anchored = self.anchored.saturating_add(nodes);
            if self.anchored > MAX_ANCHORED_NODES {
                let message = format!(
                    "too many alias expansions: anchors would hold copies of more than \
                     {MAX_ANCHORED_NODES} nodes"
                );
                self.fail(node.mark, message);
                return;
            }
            self.anchors.insert(anchor, (node.clone(), nodes));
        }
        match self.stack.last_mut() {
            None => {
                if self.root.is_none() {
                    self.root = Some(node);
                }
            }
            Some(parent) => {
                parent.nodes += nodes;
                match &mut parent.node.kind {
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
                    NodeKind::Scalar { .. } => {
                        unreachable!("scalars are never pushed on the stack")
                    }
                }
            }
        }
    }

    fn open(&mut self, kind: NodeKind, anchor: usize, mark: Marker) {
        let mark = Mark::from_marker(&mark);
        if self.stack.len() >= MAX_DEPTH {
            self.fail(mark, too_deep());
            return;
        }
        if matches!(kind, NodeKind::Map(_)) {
            self.pending_keys.push(None);
        }
        self.stack.push(Frame {
            node: Node { kind, mark },
            anchor,
            nodes: 1,
        });
    }

    fn close(&mut self) {
        if let Some(Frame {
            mut node,
            anchor,
            nodes,
        }) = self.stack.pop()
        {
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
            self.push_value(node, anchor, nodes);
        }
    }

    fn alias(&mut self, id: usize, mark: Marker) {
        let mark = Mark::from_marker(&mark);
        let Some((node, nodes)) = self.anchors.get(&id) else {
            self.fail(mark, "invalid YAML: alias to an unknown anchor".to_string());
            return;
        };
        let nodes = *nodes;
        // Counted before copying: the copy itself is what must not happen.
        self.copied = self.copied.saturating_add(nodes);
        if self.copied > MAX_ALIAS_NODES {
            self.fail(
                mark,
                format!(
                    "too many alias expansions: aliases would copy more than \
                     {MAX_ALIAS_NODES} nodes"
                ),
            );
            return;
        }
        let mut node = node.clone();
        node.mark = mark;
        self.push_value(node, 0, nodes);
    }

    fn fail(&mut self, mark: Mark, message: String) {
        if self.error.is_none() {
            self.error = Some(SyntaxError { mark, message });
        }
    }
}

impl MarkedEventReceiver for TreeBuilder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(text, style, anchor, _tag) => {
                let weight = scalar_weight(&text);
                let node = Node {
                    kind: NodeKind::Scalar {
                        text,
                        plain: style == TScalarStyle::Plain,
                    },
                    mark: Mark::from_marker(&mark),
                };
                self.push_value(node, anchor, weight);
            }
            Event::SequenceStart(anchor, _) => self.open(NodeKind::Seq(Vec::new()), anchor, mark),
            Event::MappingStart(anchor, _) => self.open(NodeKind::Map(Vec::new()), anchor, mark),
            Event::SequenceEnd | Event::MappingEnd => self.close(),
            Event::Alias(id) => self.alias(id, mark),
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
    /// `levels` block mappings, one inside the other, one space of indent each.
    pub(crate) fn nested_block_mappings(levels: usize) -> String {
        let mut doc = String::new();
        for level in 0..levels {
            doc.push_str(&" ".repeat(level));
            doc.push_str("a:\n");
        }
        doc.push_str(&" ".repeat(levels));
        doc.push_str("b: 1\n");
        doc
    }

    /// Runs `f` on a thread with a small stack, as a reload runs on one.
    fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(f)
            .expect("spawn")
            .join()
            .expect("no stack overflow")
    }

    #[test]
    fn deep_nesting_is_refused_with_a_position_on_a_small_stack() {
        let err = on_small_stack(|| parse(&nested_block_mappings(5_000)).expect_err("too deep"));
        assert!(err.message.starts_with("too deeply nested"), "{err:?}");
        assert_eq!(err.mark.line, MAX_DEPTH + 1, "at the first level too many");

        // Flow style nests without indentation: 100,000 levels in 200 KB.
        let flow = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let err = on_small_stack(move || parse(&flow).expect_err("too deep"));
        assert!(err.message.starts_with("too deeply nested"), "{err:?}");
        assert_eq!(err.mark.line, 1, "{err:?}");
    }

    #[test]
    fn the_deepest_accepted_tree_is_walked_safely_on_a_small_stack() {
        // The root mapping is level 1, the innermost `a:` mapping holding `b` is MAX_DEPTH.
        let doc = nested_block_mappings(MAX_DEPTH - 1);
        on_small_stack(move || {
            let tree = parse(&doc).expect("deep but within the bound");
            let copy = tree.clone();
            assert_eq!(copy, tree);
            drop(copy);
            // Decoding reports the unknown field and goes no deeper.
            let errors = crate::core::config::load_str(&doc, "deep.yaml", &|_| None)
                .expect_err("not a config");
            assert!(errors.0.iter().any(|e| e.message.contains("unknown field")));
        });
        let err = parse(&nested_block_mappings(MAX_DEPTH)).expect_err("one level too deep");
        assert!(err.message.starts_with("too deeply nested"), "{err:?}");
    }

    #[test]
    fn an_alias_bomb_is_refused_before_it_expands() {
        let mut doc = String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        for level in 1..10 {
            let prev = format!("*a{}", level - 1);
            let items = [prev.as_str(); 9].join(", ");
            doc.push_str(&format!("a{level}: &a{level} [{items}]\n"));
        }
        let err = parse(&doc).expect_err("billion laughs");
        assert!(
            err.message.starts_with("too many alias expansions"),
            "{err:?}"
        );
        assert!(err.mark.line > 1 && err.mark.line <= 10, "{err:?}");
    }

    #[test]
    fn a_long_text_aliased_many_times_is_bounded_by_what_it_copies() {
        // 1 MiB of text, aliased 10 times: 10 MiB copied from a 1 MiB file.
        let text = "x".repeat(1 << 20);
        let aliases = ["*t"; 10].join(", ");
        let err = parse(&format!("t: &t {text}\nl: [{aliases}]\n")).expect_err("10 MiB of copies");
        assert!(
            err.message.starts_with("too many alias expansions"),
            "{err:?}"
        );
        // A short text aliased as often is an ordinary config.
        parse(&format!("t: &t short\nl: [{aliases}]\n")).expect("small copies");
    }

    #[test]
    fn nested_anchors_around_a_long_list_are_refused() {
        // No alias at all: 64 nested anchors would each keep a copy of the list.
        let list = format!("[{}]", vec!["x"; 20_000].join(", "));
        let opens: String = (0..60).map(|i| format!("&a{i} [")).collect();
        let doc = format!("a: {opens}{list}{}\n", "]".repeat(60));
        let err = parse(&doc).expect_err("anchors holding too much");
        assert!(
            err.message.starts_with("too many alias expansions"),
            "{err:?}"
        );
        // One anchor on the same list is fine.
        parse(&format!("a: &a {list}\n")).expect("one copy");
    }

    #[test]
    fn an_alias_to_an_unknown_or_open_anchor_is_an_error() {
        let err = parse("a: *nowhere\n").expect_err("unknown anchor");
        assert!(err.message.starts_with("invalid YAML"), "{err:?}");
        let err = parse("a: &x [*x]\n").expect_err("an anchor inside itself");
        assert!(err.message.starts_with("invalid YAML"), "{err:?}");
    }
}
