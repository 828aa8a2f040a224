//! Choosing what to read: the actor, type, version, time and event-type filters of the
//! command line, and the `TYPE/KEY` syntax that names an actor.

use std::fmt;

use quark::journal::format::{EventRecord, SnapshotRecord};
use quark::ActorKey;

use super::time::parse_time;

#[derive(clap::Args, Debug)]
pub(super) struct Filters {
    /// Only this actor: `TYPE/KEY` with KEY a u64 (`account/42`), a string (`account/ann`;
    /// quote it, `account/"42"`, when it looks like a number or hex) or bytes (`account/0x00ff`).
    #[arg(long, value_name = "TYPE/KEY", value_parser = parse_actor)]
    pub(super) actor: Option<ActorSel>,
    /// Only actors of this type.
    #[arg(long = "type", value_name = "TYPE", conflicts_with = "actor")]
    type_name: Option<String>,
    /// Only versions from N on (inclusive).
    #[arg(long, value_name = "N")]
    from_version: Option<u64>,
    /// Only versions up to N (inclusive).
    #[arg(long, value_name = "N")]
    to_version: Option<u64>,
    /// Only records persisted at or after this time (ms since the Unix epoch, or RFC 3339).
    #[arg(long, value_name = "MS|RFC3339", value_parser = parse_time)]
    since: Option<u64>,
    /// Only records persisted at or before this time (ms since the Unix epoch, or RFC 3339).
    #[arg(long, value_name = "MS|RFC3339", value_parser = parse_time)]
    until: Option<u64>,
    /// Only events with this type name.
    #[arg(long, value_name = "NAME")]
    event_type: Option<String>,
    /// Also list the snapshots (with `--actor`, and in `export`).
    #[arg(long)]
    pub(super) snapshots: bool,
}

impl Filters {
    pub(super) fn selects(&self, type_name: &str, key: &ActorKey) -> bool {
        match (&self.actor, &self.type_name) {
            (Some(a), _) => a.type_name == type_name && &a.key == key,
            (None, Some(t)) => t == type_name,
            (None, None) => true,
        }
    }

    fn in_range(&self, version: u64, timestamp_ms: u64) -> bool {
        self.from_version.is_none_or(|v| version >= v)
            && self.to_version.is_none_or(|v| version <= v)
            && self.since.is_none_or(|t| timestamp_ms >= t)
            && self.until.is_none_or(|t| timestamp_ms <= t)
    }

    pub(super) fn event(&self, e: &EventRecord) -> bool {
        self.in_range(e.version, e.timestamp_ms)
            && self.event_type.as_ref().is_none_or(|n| *n == e.event_type)
    }

    pub(super) fn snapshot(&self, s: &SnapshotRecord) -> bool {
        self.in_range(s.version, s.timestamp_ms)
    }
}

/// An actor named on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct ActorSel {
    pub(super) type_name: String,
    pub(super) key: ActorKey,
}

impl fmt::Display for ActorSel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{:?}", self.type_name, self.key)
    }
}

/// Parses `TYPE/KEY` (split at the first `/`; see [`parse_key`]).
pub(super) fn parse_actor(s: &str) -> Result<ActorSel, String> {
    let Some((type_name, key)) = s.split_once('/') else {
        return Err(format!(
            "actor {s:?} is not TYPE/KEY (for example account/42, account/ann, account/0x00ff)"
        ));
    };
    if type_name.is_empty() {
        return Err(format!("actor {s:?} has an empty type name"));
    }
    if type_name.len() > u8::MAX as usize {
        return Err(format!(
            "actor {s:?}: type names are at most 255 bytes in the journal"
        ));
    }
    let key = parse_key(key).map_err(|why| format!("actor {s:?}: {why}"))?;
    Ok(ActorSel {
        type_name: type_name.to_owned(),
        key,
    })
}

/// KEY syntax: decimal digits = u64; `"..."` = string (with `\"`, `\\`, `\n`, `\r`, `\t`, `\0`,
/// `\u{..}` escapes, as `inspect` prints keys); `0x` + an even number of hex digits = bytes;
/// anything else = the string as typed.
pub(crate) fn parse_key(s: &str) -> Result<ActorKey, String> {
    if s.is_empty() {
        return Err("the key is empty (quote it, \"\", for an empty string key)".into());
    }
    if let Some(quoted) = s.strip_prefix('"') {
        let Some(inner) = quoted.strip_suffix('"') else {
            return Err(format!("the key {s} has no closing quote"));
        };
        return unescape(inner).map(|k| ActorKey::from(k.as_str()));
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse::<u64>().map(ActorKey::U64).map_err(|_| {
            format!("the key {s} does not fit a u64 (quote it for a string key: \"{s}\")")
        });
    }
    if let Some(digits) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        return unhex(digits).map(|b| ActorKey::from(&b[..])).ok_or_else(|| {
            format!("the key {s} is not 0x followed by pairs of hex digits (quote it for a string key)")
        });
    }
    Ok(ActorKey::from(s))
}

fn unescape(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let bad = || format!("bad escape in the quoted key \"{s}\"");
        match chars.next().ok_or_else(bad)? {
            '"' => out.push('"'),
            '\\' => out.push('\\'),
            '\'' => out.push('\''),
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            '0' => out.push('\0'),
            'u' => {
                let rest = chars.as_str();
                let body = rest.strip_prefix('{').ok_or_else(bad)?;
                let end = body.find('}').ok_or_else(bad)?;
                let code = u32::from_str_radix(&body[..end], 16).map_err(|_| bad())?;
                out.push(char::from_u32(code).ok_or_else(bad)?);
                chars = body[end + 1..].chars();
            }
            _ => return Err(bad()),
        }
    }
    Ok(out)
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_as_documented() {
        let k = |s: &str| parse_key(s).unwrap();
        assert_eq!(k("42"), ActorKey::U64(42));
        assert_eq!(k("ann"), ActorKey::from("ann"));
        assert_eq!(k("\"42\""), ActorKey::from("42"));
        assert_eq!(k("\"a\\\"b\\u{1f600}\""), ActorKey::from("a\"b\u{1f600}"));
        assert_eq!(k("0x00ff"), ActorKey::from(&[0u8, 0xff][..]));
        assert_eq!(k("a/b"), ActorKey::from("a/b"));
        assert!(parse_key("").is_err());
        assert!(parse_key("0xabc").is_err());
        assert!(parse_key("99999999999999999999999").is_err());
        assert!(parse_key("\"open").is_err());
        // What inspect prints reads back as the same key.
        for key in [
            ActorKey::U64(7),
            ActorKey::from("a \"quoted\"\tkey\n"),
            ActorKey::from("42"),
            ActorKey::from(&b"\x01\x02"[..]),
        ] {
            assert_eq!(k(&format!("{key:?}")), key, "{key:?}");
        }
        let a = parse_actor("account/ann/x").unwrap();
        assert_eq!(
            (a.type_name.as_str(), a.key),
            ("account", ActorKey::from("ann/x"))
        );
        assert!(parse_actor("account").is_err());
        assert!(parse_actor("/1").is_err());
    }
}
