//! Where each key and value of a config file is written: the byte span of every key and value,
//! read once the TOML parser accepted the text, so that an error can name a key's full path
//! (`log.fsync.interval_ms`, `cluster.nodes[1].addr`) and quote a value as written.
//!
//! The spans come from `toml_edit`'s public API (`ImDocument::parse`, `Key::span`,
//! `Item::span`), the parser `toml` 0.8 itself uses (the same version, so one copy is compiled).
//! Keys the parser gives no span (keys of implicit tables, in some versions) are kept with
//! `None`, so paths stay whole.

use std::ops::Range;

use toml_edit::{ImDocument, Item as TomlItem, TableLike, Value};

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
    pub(crate) fn parse(text: &str) -> Result<Doc, toml_edit::TomlError> {
        let doc = ImDocument::parse(text)?;
        Ok(Doc {
            root: entries(doc.as_table()),
        })
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

/// The entries of a table (a `[table]`, an inline table, or the document), in file order.
fn entries(table: &dyn TableLike) -> Vec<Entry> {
    table
        .iter()
        .map(|(name, item)| Entry {
            key: name.to_owned(),
            key_span: table.get_key_value(name).and_then(|(k, _)| k.span()),
            value: item_of(item),
        })
        .collect()
}

fn item_of(item: &TomlItem) -> Item {
    match item {
        TomlItem::Value(v) => value_of(v),
        TomlItem::Table(t) => Item {
            span: t.span(),
            kind: Kind::Table(entries(t)),
        },
        TomlItem::ArrayOfTables(a) => Item {
            span: a.span(),
            kind: Kind::Array(
                a.iter()
                    .map(|t| Item {
                        span: t.span(),
                        kind: Kind::Table(entries(t)),
                    })
                    .collect(),
            ),
        },
        TomlItem::None => Item {
            span: None,
            kind: Kind::Scalar,
        },
    }
}

fn value_of(v: &Value) -> Item {
    let kind = match v {
        Value::Array(a) => Kind::Array(a.iter().map(value_of).collect()),
        Value::InlineTable(t) => Kind::Table(entries(t)),
        _ => Kind::Scalar,
    };
    Item {
        span: v.span(),
        kind,
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

    #[test]
    fn dotted_keys_and_arrays() {
        let text = "log.fsync.interval_ms = 7\n[cluster]\nseeds = [\"a\", { id = 3 }]\n";
        let doc = Doc::parse(text).expect("valid TOML");
        let seven = text.find('7').expect("7");
        assert_eq!(
            doc.path_at(&(seven..seven + 1)).as_deref(),
            Some("log.fsync.interval_ms")
        );
        let three = text.find('3').expect("3");
        assert_eq!(
            doc.path_at(&(three..three + 1)).as_deref(),
            Some("cluster.seeds[1].id")
        );
        let span = doc.value_span("cluster.seeds[0]").expect("a span");
        assert_eq!(&text[span], "\"a\"");
    }
}
