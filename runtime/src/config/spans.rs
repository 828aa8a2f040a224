//! Where each key and value of a config file is written: the byte span of every key and value,
//! read once the TOML parser accepted the text, so that an error can name a key's full path
//! (`log.fsync.interval_ms`, `cluster.nodes[1].addr`) and quote a value as written.
//!
//! The spans come from the `toml` deserializer's span protocol (the one `toml::Spanned` uses).
//! Keys of implicit tables (`actors` in `[actors.x]`) and dotted keys may come without a span;
//! the tree keeps them (with `None`) so paths stay whole.

use std::fmt;
use std::ops::Range;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

// The names of the `toml` span protocol (serde_spanned 0.6, which `toml` 0.8 speaks). A value
// asked for as this struct is handed over as the map { start, end, value } when the parser
// knows its span, and as itself otherwise.
const SPANNED: &str = "$__serde_spanned_private_Spanned";
const START: &str = "$__serde_spanned_private_start";
const END: &str = "$__serde_spanned_private_end";
const VALUE: &str = "$__serde_spanned_private_value";
const SPANNED_FIELDS: &[&str] = &[START, END, VALUE];
/// The key under which `toml` hands over a date-time (as a one-entry map).
const DATETIME: &str = "$__toml_private_datetime";

/// The key tree of one document, with spans.
#[derive(Debug)]
pub(crate) struct Doc {
    root: Vec<Entry>,
}

#[derive(Debug)]
struct Entry {
    key: String,
    key_span: Option<Range<usize>>,
    value: Item,
}

#[derive(Debug)]
struct Item {
    span: Option<Range<usize>>,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Table(Vec<Entry>),
    Array(Vec<Item>),
    Scalar,
}

impl Doc {
    /// Reads the key tree of `text` (which the TOML parser already accepted).
    pub(crate) fn parse(text: &str) -> Result<Doc, toml::de::Error> {
        match toml::from_str::<Item>(text)?.kind {
            Kind::Table(root) => Ok(Doc { root }),
            // A document is always a table.
            Kind::Array(_) | Kind::Scalar => Ok(Doc { root: Vec::new() }),
        }
    }

    /// The full path of the deepest key whose name or value covers `span` (the span a parser
    /// error points at).
    pub(crate) fn path_at(&self, span: &Range<usize>) -> Option<String> {
        let mut best = None;
        find_in_table(&self.root, span, &mut String::new(), &mut best);
        best.map(|(_, path)| path)
    }

    /// The span of the value at `path` (dotted keys, `[i]` for an array element).
    pub(crate) fn value_span(&self, path: &str) -> Option<Range<usize>> {
        let mut entries = &self.root;
        let mut rest = path;
        loop {
            // Match a whole key name (which may itself contain dots) at the start of `rest`.
            let entry = entries.iter().find(|e| {
                rest.strip_prefix(e.key.as_str())
                    .is_some_and(|r| r.is_empty() || r.starts_with('.') || r.starts_with('['))
            })?;
            let mut item = &entry.value;
            rest = &rest[entry.key.len()..];
            while let Some(r) = rest.strip_prefix('[') {
                let (index, r) = r.split_once(']')?;
                let Kind::Array(items) = &item.kind else {
                    return None;
                };
                item = items.get(index.parse::<usize>().ok()?)?;
                rest = r;
            }
            if rest.is_empty() {
                return item.span.clone();
            }
            rest = rest.strip_prefix('.')?;
            let Kind::Table(t) = &item.kind else {
                return None;
            };
            entries = t;
        }
    }
}

fn covers(outer: &Option<Range<usize>>, inner: &Range<usize>) -> bool {
    outer
        .as_ref()
        .is_some_and(|o| o.start <= inner.start && inner.end <= o.end.max(o.start + 1))
}

/// Depth-first: the last (deepest) match wins; `best` holds (depth, path).
fn find_in_table(
    entries: &[Entry],
    span: &Range<usize>,
    path: &mut String,
    best: &mut Option<(usize, String)>,
) {
    for e in entries {
        let len = path.len();
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(&e.key);
        if covers(&e.key_span, span) || covers(&e.value.span, span) {
            let depth = path.len();
            if best.as_ref().is_none_or(|(d, _)| depth >= *d) {
                *best = Some((depth, path.clone()));
            }
        }
        find_in_item(&e.value, span, path, best);
        path.truncate(len);
    }
}

fn find_in_item(
    item: &Item,
    span: &Range<usize>,
    path: &mut String,
    best: &mut Option<(usize, String)>,
) {
    match &item.kind {
        Kind::Table(t) => find_in_table(t, span, path, best),
        Kind::Array(items) => {
            for (i, it) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                if covers(&it.span, span) {
                    let depth = path.len();
                    if best.as_ref().is_none_or(|(d, _)| depth >= *d) {
                        *best = Some((depth, path.clone()));
                    }
                }
                find_in_item(it, span, path, best);
                path.truncate(len);
            }
        }
        Kind::Scalar => {}
    }
}

/// A key, with its span when the parser gives one.
struct Key {
    text: String,
    span: Option<Range<usize>>,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(Key {
                    text: v.to_owned(),
                    span: None,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Key, A::Error> {
                let (span, text) = spanned_body::<A, String>(&mut map)?;
                Ok(Key {
                    text,
                    span: Some(span),
                })
            }
        }
        d.deserialize_struct(SPANNED, SPANNED_FIELDS, V)
    }
}

/// Reads `{ start, end, value }` of the span protocol, the `start` key already consumed.
fn spanned_rest<'de, A: MapAccess<'de>, T: Deserialize<'de>>(
    map: &mut A,
) -> Result<(Range<usize>, T), A::Error> {
    let start: usize = map.next_value()?;
    let end_key: Option<String> = map.next_key()?;
    if end_key.as_deref() != Some(END) {
        return Err(de::Error::custom("malformed span"));
    }
    let end: usize = map.next_value()?;
    let value_key: Option<String> = map.next_key()?;
    if value_key.as_deref() != Some(VALUE) {
        return Err(de::Error::custom("malformed span"));
    }
    let value = map.next_value()?;
    Ok((start..end, value))
}

fn spanned_body<'de, A: MapAccess<'de>, T: Deserialize<'de>>(
    map: &mut A,
) -> Result<(Range<usize>, T), A::Error> {
    let start_key: Option<String> = map.next_key()?;
    if start_key.as_deref() != Some(START) {
        return Err(de::Error::custom("malformed span"));
    }
    spanned_rest(map)
}

/// An item asked for without the span protocol (the `value` of a spanned item: asking for it
/// spanned again would be answered with the same span, forever).
struct Unspanned(Item);

impl<'de> Deserialize<'de> for Unspanned {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ItemVisitor).map(Unspanned)
    }
}

impl<'de> Deserialize<'de> for Item {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_struct(SPANNED, SPANNED_FIELDS, ItemVisitor)
    }
}

struct ItemVisitor;

impl<'de> Visitor<'de> for ItemVisitor {
    type Value = Item;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a TOML value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Item, E> {
        Ok(scalar())
    }
    fn visit_i64<E>(self, _: i64) -> Result<Item, E> {
        Ok(scalar())
    }
    fn visit_u64<E>(self, _: u64) -> Result<Item, E> {
        Ok(scalar())
    }
    fn visit_f64<E>(self, _: f64) -> Result<Item, E> {
        Ok(scalar())
    }
    fn visit_str<E>(self, _: &str) -> Result<Item, E> {
        Ok(scalar())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Item, A::Error> {
        let mut items = Vec::new();
        while let Some(it) = seq.next_element::<Item>()? {
            items.push(it);
        }
        Ok(Item {
            span: None,
            kind: Kind::Array(items),
        })
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Item, A::Error> {
        let Some(first) = map.next_key::<Key>()? else {
            return Ok(Item {
                span: None,
                kind: Kind::Table(Vec::new()),
            });
        };
        if first.text == START {
            let (span, Unspanned(mut item)) = spanned_rest(&mut map)?;
            item.span = Some(span);
            return Ok(item);
        }
        if first.text == DATETIME {
            map.next_value::<IgnoredAny>()?;
            return Ok(scalar());
        }
        let mut entries = Vec::new();
        let mut key = Some(first);
        while let Some(k) = key {
            let value = map.next_value::<Item>()?;
            entries.push(Entry {
                key: k.text,
                key_span: k.span,
                value,
            });
            key = map.next_key::<Key>()?;
        }
        Ok(Item {
            span: None,
            kind: Kind::Table(entries),
        })
    }
}

fn scalar() -> Item {
    Item {
        span: None,
        kind: Kind::Scalar,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "[node]\nshards = 2\n[actors.x]\nidle_timeout_ms = 5\n\
        [[cluster.nodes]]\nid = 1\n[[cluster.nodes]]\nid = 2\n\
        [log]\nfsync = { interval_ms = 5 }\nwhen = 1979-05-27\n";

    /// The path at `part` of the first occurrence of `needle`.
    fn at(doc: &Doc, needle: &str, part: std::ops::Range<usize>) -> Option<String> {
        let start = TEXT.find(needle).expect("needle");
        doc.path_at(&(start + part.start..start + part.end))
    }

    #[test]
    fn paths_of_keys_and_values() {
        let doc = Doc::parse(TEXT).expect("valid TOML");
        let path = |needle, part| at(&doc, needle, part);
        assert_eq!(path("shards", 0..6).as_deref(), Some("node.shards"));
        assert_eq!(path("shards = 2", 9..10).as_deref(), Some("node.shards"));
        assert_eq!(
            path("_ms = 5", 6..7).as_deref(),
            Some("actors.x.idle_timeout_ms")
        );
        assert_eq!(path("id = 2", 0..2).as_deref(), Some("cluster.nodes[1].id"));
        assert_eq!(path("id = 2", 5..6).as_deref(), Some("cluster.nodes[1].id"));
        assert_eq!(
            path("interval_ms", 0..11).as_deref(),
            Some("log.fsync.interval_ms")
        );
        assert_eq!(path("1979", 0..4).as_deref(), Some("log.when"));
    }

    #[test]
    fn value_spans_by_path() {
        let doc = Doc::parse(TEXT).expect("valid TOML");
        let text = |p: &str| doc.value_span(p).map(|s| &TEXT[s]);
        assert_eq!(text("node.shards"), Some("2"));
        assert_eq!(text("actors.x.idle_timeout_ms"), Some("5"));
        assert_eq!(text("cluster.nodes[1].id"), Some("2"));
        assert_eq!(text("log.fsync.interval_ms"), Some("5"));
        assert_eq!(text("log.fsync"), Some("{ interval_ms = 5 }"));
        assert_eq!(text("node.nothing"), None);
    }
}
