//! Decoding the spanned YAML tree into the config types, collecting every error.
//!
//! Each type says how it decodes (`Decode`); structs list their fields once with
//! `decode_struct!`, which also rejects unknown fields. Decoding never stops at the
//! first error: a failed field is recorded and its siblings are still checked.

use super::error::ConfigError;
use super::yaml::{Mark, Node, NodeKind};
use std::collections::HashSet;
use std::time::Duration;

/// One step of a field path: `.name` or `[index]`.
enum Segment {
    Key(String),
    Index(usize),
}

/// The decoding context: file name, current field path, errors so far, environment.
pub struct Cx<'a> {
    file: &'a str,
    path: Vec<Segment>,
    errors: Vec<ConfigError>,
    /// Every field path with an error at or below it (`routes[2].rate_limit.per`
    /// adds itself, `routes[2].rate_limit`, `routes[2]` and `routes`), so that
    /// `has_errors_under` costs one lookup however many errors there are.
    failed_paths: HashSet<String>,
    env: &'a dyn Fn(&str) -> Option<String>,
}

impl<'a> Cx<'a> {
    pub fn new(file: &'a str, env: &'a dyn Fn(&str) -> Option<String>) -> Self {
        Cx {
            file,
            path: Vec::new(),
            errors: Vec::new(),
            failed_paths: HashSet::new(),
            env,
        }
    }

    pub fn into_errors(self) -> Vec<ConfigError> {
        self.errors
    }

    pub fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }

    /// Whether an error was already reported at `path` or below it; checks after
    /// decoding use it to avoid follow-on errors about what failed to decode.
    pub fn has_errors_under(&self, path: &str) -> bool {
        self.failed_paths.contains(path)
    }

    /// Records an error at `mark` for the current field path.
    pub fn error(&mut self, mark: Mark, message: impl Into<String>) {
        let path = self.path_string();
        self.error_at(&path, mark, message);
    }

    /// Records an error for a field given by its whole path (checks after decoding).
    pub fn error_at(&mut self, path: &str, mark: Mark, message: impl Into<String>) {
        // The path and each field path above it: cut before every `.` and `[`.
        let mut end = path.len();
        while self.failed_paths.insert(path[..end].to_string()) {
            match path[..end].rfind(['.', '[']) {
                Some(cut) => end = cut,
                None => break,
            }
        }
        self.errors.push(ConfigError {
            file: self.file.to_string(),
            line: mark.line,
            col: mark.col,
            path: path.to_string(),
            message: message.into(),
        });
    }

    fn path_string(&self) -> String {
        let mut out = String::new();
        for seg in &self.path {
            match seg {
                Segment::Key(k) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(k);
                }
                Segment::Index(i) => {
                    out.push('[');
                    out.push_str(&i.to_string());
                    out.push(']');
                }
            }
        }
        out
    }

    /// Runs `f` with `key` appended to the field path.
    pub fn at_key<T>(&mut self, key: &str, f: impl FnOnce(&mut Self) -> T) -> T {
        self.path.push(Segment::Key(key.to_string()));
        let out = f(self);
        self.path.pop();
        out
    }

    /// Runs `f` with `[index]` appended to the field path.
    pub fn at_index<T>(&mut self, index: usize, f: impl FnOnce(&mut Self) -> T) -> T {
        self.path.push(Segment::Index(index));
        let out = f(self);
        self.path.pop();
        out
    }

    /// The mapping's entries, after reporting unknown and duplicate keys.
    pub fn fields<'n>(&mut self, node: &'n Node, known: &[&str]) -> Option<Fields<'n>> {
        let NodeKind::Map(entries) = &node.kind else {
            self.error(
                node.mark,
                format!("expected a mapping, found {}", node.describe()),
            );
            return None;
        };
        // Bad keys are reported and the known fields are still decoded, so that one
        // run lists every error.
        let mut seen = HashSet::new();
        for (key, _) in entries {
            let Some(name) = key.scalar_text() else {
                self.error(key.mark, "a key must be a plain name");
                continue;
            };
            if !known.contains(&name) {
                self.at_key(name, |cx| {
                    cx.error(
                        key.mark,
                        format!("unknown field, expected one of: {}", known.join(", ")),
                    )
                });
            } else if !seen.insert(name) {
                self.at_key(name, |cx| cx.error(key.mark, "duplicate field"));
            }
        }
        Some(Fields { node, entries })
    }

    /// Decodes field `key` of a mapping; an absent field is `T::absent()`.
    pub fn field<T: Decode>(&mut self, fields: &Fields<'_>, key: &str) -> Option<T> {
        match fields.get(key) {
            Some(value) => self.at_key(key, |cx| T::decode(cx, value)),
            None => match T::absent() {
                Some(v) => Some(v),
                None => {
                    self.error(fields.node.mark, format!("missing field `{key}`"));
                    None
                }
            },
        }
    }

    /// A scalar's text with `${VAR}` replaced from the environment.
    pub fn string(&mut self, node: &Node) -> Option<String> {
        match &node.kind {
            NodeKind::Scalar { .. } if node.is_null() => {
                self.error(node.mark, "expected a value, found nothing (null)");
                None
            }
            NodeKind::Scalar { text, .. } => self.substitute(node.mark, text),
            _ => {
                self.error(
                    node.mark,
                    format!("expected a string, found {}", node.describe()),
                );
                None
            }
        }
    }

    /// Replaces every `${VAR}`; `$$` stands for a literal `$`.
    fn substitute(&mut self, mark: Mark, text: &str) -> Option<String> {
        if !text.contains('$') {
            return Some(text.to_string());
        }
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        let mut ok = true;
        while let Some(pos) = rest.find('$') {
            out.push_str(&rest[..pos]);
            let after = &rest[pos + 1..];
            if let Some(tail) = after.strip_prefix('$') {
                out.push('$');
                rest = tail;
            } else if let Some(body) = after.strip_prefix('{') {
                let Some(end) = body.find('}') else {
                    self.error(mark, "unclosed `${` in value");
                    return None;
                };
                let name = &body[..end];
                let valid = !name.is_empty()
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    && !name.starts_with(|c: char| c.is_ascii_digit());
                if !valid {
                    self.error(mark, format!("`${{{name}}}` is not a valid variable name"));
                    ok = false;
                } else {
                    match (self.env)(name) {
                        Some(value) => out.push_str(&value),
                        None => {
                            self.error(mark, format!("environment variable `{name}` is not set"));
                            ok = false;
                        }
                    }
                }
                rest = &body[end + 1..];
            } else {
                out.push('$');
                rest = after;
            }
        }
        out.push_str(rest);
        ok.then_some(out)
    }

    /// A scalar parsed by `parse`; on failure: `expected {expected}, found "raw"`.
    /// The raw text (before `${VAR}` substitution) is shown, so an environment
    /// value, which may be a secret, never reaches a message.
    pub fn parsed<T>(
        &mut self,
        node: &Node,
        expected: &str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Option<T> {
        let value = self.string(node)?;
        match parse(value.trim()) {
            Some(v) => Some(v),
            None => {
                let found = match node.scalar_text() {
                    Some(text) => format!("{text:?}"),
                    None => node.describe().to_string(),
                };
                self.error(node.mark, format!("expected {expected}, found {found}"));
                None
            }
        }
    }
}

/// The entries of one mapping, as returned by [`Cx::fields`].
pub struct Fields<'n> {
    node: &'n Node,
    entries: &'n [(Node, Node)],
}

impl<'n> Fields<'n> {
    pub fn get(&self, key: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|(k, _)| k.scalar_text() == Some(key))
            .map(|(_, v)| v)
    }
}

/// How a config type is read from a YAML node.
pub trait Decode: Sized {
    fn decode(cx: &mut Cx<'_>, node: &Node) -> Option<Self>;

    /// The value of an absent field; `None` makes the field required.
    fn absent() -> Option<Self> {
        None
    }
}

/// Implements [`Decode`] for a struct whose YAML keys are its field names;
/// `field as "key"` names a field whose key is a Rust keyword (`match`).
macro_rules! decode_struct {
    (@key $field:ident $key:literal) => { $key };
    (@key $field:ident) => { stringify!($field) };
    ($ty:ident { $($field:ident $(as $key:literal)?),* $(,)? }) => {
        impl $crate::core::config::decode::Decode for $ty {
            fn decode(
                cx: &mut $crate::core::config::decode::Cx<'_>,
                node: &$crate::core::config::yaml::Node,
            ) -> Option<Self> {
                let fields = cx.fields(node, &[$(decode_struct!(@key $field $($key)?)),*])?;
                $( let $field = cx.field(&fields, decode_struct!(@key $field $($key)?)); )*
                Some($ty { $($field: $field?),* })
            }
        }
    };
}
pub(crate) use decode_struct;

/// Implements [`Decode`] for a fieldless enum written as one of a few words.
macro_rules! decode_enum {
    ($ty:ident { $($word:literal => $variant:ident),* $(,)? }) => {
        impl $crate::core::config::decode::Decode for $ty {
            fn decode(
                cx: &mut $crate::core::config::decode::Cx<'_>,
                node: &$crate::core::config::yaml::Node,
            ) -> Option<Self> {
                let expected = concat!("one of ", $($word, " "),*);
                cx.parsed(node, expected.trim_end(), |s| match s {
                    $($word => Some($ty::$variant),)*
                    _ => None,
                })
            }
        }
    };
}
pub(crate) use decode_enum;

impl<T: Decode> Decode for Option<T> {
    fn decode(cx: &mut Cx<'_>, node: &Node) -> Option<Self> {
        // A failed optional field is reported and then treated as absent, so the
        // rest of the file is still checked (cross-references included).
        if node.is_null() {
            return Some(None);
        }
        Some(T::decode(cx, node))
    }

    fn absent() -> Option<Self> {
        Some(None)
    }
}

impl<T: Decode> Decode for Vec<T> {
    /// Every item is checked; one failed item fails the list (an optional list
    /// is then absent), so no index shifts in later messages.
    fn decode(cx: &mut Cx<'_>, node: &Node) -> Option<Self> {
        let list = Indexed::<T>::decode(cx, node)?;
        (!list.has_failed_items()).then(|| list.items.into_iter().map(|(_, t)| t).collect())
    }
}

/// A list whose failed items are reported and left out while the others are
/// kept with their index in the file, so checks after decoding still run on
/// them and name them right (`routes`, `consumers`, `listen`).
#[derive(Debug, Clone, PartialEq)]
pub struct Indexed<T> {
    pub items: Vec<(usize, T)>,
    /// How many items the file has, decoded or not.
    pub written: usize,
}

impl<T> Indexed<T> {
    /// The decoded items with their index in the file.
    pub fn iter(&self) -> impl Iterator<Item = (usize, &T)> {
        self.items.iter().map(|(i, t)| (*i, t))
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Whether some item failed to decode.
    pub fn has_failed_items(&self) -> bool {
        self.items.len() < self.written
    }
}

impl<T: Decode> Decode for Indexed<T> {
    fn decode(cx: &mut Cx<'_>, node: &Node) -> Option<Self> {
        let NodeKind::Seq(items) = &node.kind else {
            cx.error(
                node.mark,
                format!("expected a list, found {}", node.describe()),
            );
            return None;
        };
        let decoded = items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| cx.at_index(i, |cx| T::decode(cx, item)).map(|t| (i, t)))
            .collect();
        Some(Indexed {
            items: decoded,
            written: items.len(),
        })
    }
}

impl Decode for String {
    fn decode(cx: &mut Cx<'_>, node: &Node) -> Option<Self> {
        cx.string(node)
    }
}

impl Decode for bool {
    fn decode(cx: &mut Cx<'_>, node: &Node) -> Option<Self> {
        cx.parsed(node, "true or false", |s| match s {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        })
    }
}

macro_rules! decode_unsigned {
    ($($t:ty),*) => {$(
        impl Decode for $t {
            fn decode(cx: &mut Cx<'_>, node: &Node) -> Option<Self> {
                cx.parsed(node, concat!("a whole number (", stringify!($t), ")"), |s| s.parse().ok())
            }
        }
    )*};
}
decode_unsigned!(u16, u32, u64, usize);

/// A whole number that may be negative, for fields whose range is checked
/// after decoding (a peer's `weight`), so `-1` gets that check's message.
impl Decode for i64 {
    fn decode(cx: &mut Cx<'_>, node: &Node) -> Option<Self> {
        cx.parsed(node, "a whole number", |s| s.parse().ok())
    }
}

impl Decode for Duration {
    fn decode(cx: &mut Cx<'_>, node: &Node) -> Option<Self> {
        cx.parsed(node, "a duration like \"10s\"", parse_duration)
    }
}

/// `500ms`, `2s`, `1m`, `1h` (also `d`); a number and a unit, no spaces.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let ms = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        _ => None,
    }?;
    Some(Duration::from_millis(ms))
}

/// A size in bytes, written `512KiB`, `1MiB`, `1GiB`, `100B` or a plain number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl Decode for ByteSize {
    fn decode(cx: &mut Cx<'_>, node: &Node) -> Option<Self> {
        cx.parsed(node, "a size like \"512KiB\" or \"1MiB\"", parse_size)
            .map(ByteSize)
    }
}

pub fn parse_size(s: &str) -> Option<u64> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let factor: u64 = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(factor)
}

/// A value and where it was written, for errors found after decoding.
#[derive(Debug, Clone, PartialEq)]
pub struct Spanned<T> {
    pub value: T,
    pub mark: Mark,
    /// Whether the value came (in part) from a `${VAR}`: then it is never shown.
    pub from_env: bool,
}

impl<T> Spanned<T> {
    pub fn new(value: T, mark: Mark) -> Self {
        Spanned {
            value,
            mark,
            from_env: false,
        }
    }
}

impl<T: std::fmt::Debug> Spanned<T> {
    /// The value for a message: quoted, or a placeholder when it came from the
    /// environment (which may hold secrets).
    pub fn shown(&self) -> String {
        if self.from_env {
            "(a value from the environment)".to_string()
        } else {
            format!("{:?}", self.value)
        }
    }
}

impl<T: Decode> Decode for Spanned<T> {
    fn decode(cx: &mut Cx<'_>, node: &Node) -> Option<Self> {
        T::decode(cx, node).map(|value| Spanned {
            value,
            mark: node.mark,
            from_env: node.scalar_text().is_some_and(|t| t.contains("${")),
        })
    }
}

/// A mapping from names to values, in file order (`upstreams:`, `headers:`).
#[derive(Debug, Clone, PartialEq)]
pub struct Table<T>(pub Vec<(Spanned<String>, T)>);

impl<T> Default for Table<T> {
    fn default() -> Self {
        Table(Vec::new())
    }
}

impl<T> Table<T> {
    pub fn get(&self, name: &str) -> Option<&T> {
        self.0.iter().find(|(k, _)| k.value == name).map(|(_, v)| v)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &T)> {
        self.0.iter().map(|(k, v)| (k.value.as_str(), v))
    }
}

impl<T: Decode> Decode for Table<T> {
    fn decode(cx: &mut Cx<'_>, node: &Node) -> Option<Self> {
        let NodeKind::Map(entries) = &node.kind else {
            cx.error(
                node.mark,
                format!("expected a mapping, found {}", node.describe()),
            );
            return None;
        };
        // A failed entry is reported and left out; the others are still checked.
        let mut out = Vec::with_capacity(entries.len());
        let mut seen = HashSet::with_capacity(entries.len());
        for (key, value) in entries {
            let Some(name) = key.scalar_text() else {
                cx.error(key.mark, "a key must be a plain name");
                continue;
            };
            if !seen.insert(name) {
                cx.at_key(name, |cx| cx.error(key.mark, "duplicate name"));
                continue;
            }
            if let Some(v) = cx.at_key(name, |cx| T::decode(cx, value)) {
                let name = Spanned::new(name.to_string(), key.mark);
                out.push((name, v));
            }
        }
        Some(Table(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Some(Duration::from_secs(60)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        for bad in ["", "10", "s", "5 parsecs", "1.5s", "-1s", "10sec"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512KiB"), Some(512 * 1024));
        assert_eq!(parse_size("1MiB"), Some(1 << 20));
        assert_eq!(parse_size("1024"), Some(1024));
        assert_eq!(parse_size("1 MiB"), None);
        assert_eq!(parse_size("1TiB"), None);
    }
}
