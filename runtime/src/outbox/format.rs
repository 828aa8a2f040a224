//! The outbox's storage format: log keys and the payloads of outbox, inbox, durable-state and
//! dead-letter records. Plain bytes in, plain bytes out; the table is in `docs/OUTBOX.md`.

use quark_placement::{ActorId, ActorKey};

/// Format byte of every record payload written by this version.
pub const RECORD_FORMAT: u8 = 1;

/// Key prefix of outbox records (`qo` + sender actor).
pub const OUTBOX_PREFIX: &[u8; 2] = b"qo";
/// Key prefix of inbox receipts (`qi` + receiver actor).
pub const INBOX_PREFIX: &[u8; 2] = b"qi";
/// Key prefix of durable actor state (`qs` + actor).
pub const STATE_PREFIX: &[u8; 2] = b"qs";
/// Key of the shard's dead-letter list.
pub const DEAD_LETTER_KEY: &[u8; 2] = b"qd";
/// Key prefix of saga progress (`qg` + saga actor).
pub const SAGA_PREFIX: &[u8; 2] = b"qg";

const KEY_U64: u8 = 0;
const KEY_STR: u8 = 1;
const KEY_BYTES: u8 = 2;

/// Why outbox bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// Shorter than its fields say.
    #[error("outbox record truncated: needed {needed} bytes at offset {at}, have {len}")]
    Truncated {
        /// Offset of the field that did not fit.
        at: usize,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes available.
        len: usize,
    },
    /// A format byte this version does not read.
    #[error("outbox record format {found} is not supported (this build reads {RECORD_FORMAT})")]
    UnknownFormat {
        /// The byte found.
        found: u8,
    },
    /// A name or key tag that is not valid.
    #[error("outbox record has an invalid {what}")]
    Invalid {
        /// Which field.
        what: &'static str,
    },
}

// Format (actor in a key): { type_len u8 | type name (UTF-8) | key tag u8 (0 = u64, 1 = str,
//   2 = bytes) | key (u64 LE, or the raw bytes to the end) }
/// Appends the key encoding of actor `(type_name, key)`.
pub fn encode_actor(out: &mut Vec<u8>, type_name: &str, key: &ActorKey) {
    let name = &type_name.as_bytes()[..type_name.len().min(u8::MAX as usize)];
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    encode_key(out, key);
}

fn encode_key(out: &mut Vec<u8>, key: &ActorKey) {
    match key {
        ActorKey::U64(k) => {
            out.push(KEY_U64);
            out.extend_from_slice(&k.to_le_bytes());
        }
        ActorKey::Str(s) => {
            out.push(KEY_STR);
            out.extend_from_slice(s.as_bytes());
        }
        ActorKey::Bytes(b) => {
            out.push(KEY_BYTES);
            out.extend_from_slice(b);
        }
    }
}

/// The log key `prefix | actor`.
pub fn actor_key(prefix: &[u8; 2], id: &ActorId) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + id.type_name.len());
    out.extend_from_slice(prefix);
    encode_actor(&mut out, id.type_name, &id.key);
    out
}

/// Decodes an actor key encoding (after the prefix) into (type name, key).
pub fn decode_actor(bytes: &[u8]) -> Result<(String, ActorKey), FormatError> {
    let bad = |what| FormatError::Invalid { what };
    let n = *bytes.first().ok_or(bad("actor"))? as usize;
    let name = bytes.get(1..1 + n).ok_or(bad("actor type"))?;
    let name = std::str::from_utf8(name).map_err(|_| bad("actor type"))?;
    let tag = *bytes.get(1 + n).ok_or(bad("actor key"))?;
    let key = decode_key(tag, &bytes[2 + n..])?;
    Ok((name.to_owned(), key))
}

fn decode_key(tag: u8, rest: &[u8]) -> Result<ActorKey, FormatError> {
    let bad = |what| FormatError::Invalid { what };
    Ok(match tag {
        KEY_U64 => ActorKey::U64(u64::from_le_bytes(
            rest.try_into().map_err(|_| bad("u64 key"))?,
        )),
        KEY_STR => ActorKey::from(std::str::from_utf8(rest).map_err(|_| bad("string key"))?),
        KEY_BYTES => ActorKey::from(rest),
        _ => return Err(bad("key tag")),
    })
}

/// Where an outbox message goes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// A Quark actor: (type name, key).
    Actor(String, ActorKey),
    /// An external sink, by name.
    Sink(String),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Actor(t, k) => write!(f, "{t}/{k}"),
            Target::Sink(s) => write!(f, "sink:{s}"),
        }
    }
}

impl Target {
    /// Bytes naming the target (part of a delivery pair's identity).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Target::Actor(t, k) => {
                out.push(0);
                encode_actor(&mut out, t, k);
            }
            Target::Sink(s) => {
                out.push(1);
                out.extend_from_slice(s.as_bytes());
            }
        }
        out
    }
}

/// One outbox message as stored (the record's payload).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxRecord {
    /// Wall-clock ms when the sending turn staged it.
    pub created_ms: u64,
    /// The sender's id stream (see [`crate::outbox::MessageId`]).
    pub stream: u64,
    /// An explicit id (replays of dead letters); `None`: `(stream, origin LSN)`.
    pub id_override: Option<(u64, u64)>,
    /// Where it goes.
    pub target: Target,
    /// The message type's durable name.
    pub message: String,
    /// The message, encoded (postcard).
    pub data: Vec<u8>,
}

// Format (outbox record payload): { format u8 = 1 | created_ms u64 | stream u64 |
//   id override u8 (0 | 1: stream u64, seq u64) | target kind u8 (0 actor, 1 sink) |
//   target_len u32 | target (actor encoding, or sink name) | name_len u8 | message name |
//   data_len u32 | data }, integers LE.
/// Encodes an outbox record's payload.
pub fn encode_outbox(out: &mut Vec<u8>, r: &OutboxRecord) {
    out.push(RECORD_FORMAT);
    out.extend_from_slice(&r.created_ms.to_le_bytes());
    out.extend_from_slice(&r.stream.to_le_bytes());
    match r.id_override {
        None => out.push(0),
        Some((s, q)) => {
            out.push(1);
            out.extend_from_slice(&s.to_le_bytes());
            out.extend_from_slice(&q.to_le_bytes());
        }
    }
    let t = r.target.encode();
    out.push(t[0]);
    out.extend_from_slice(&((t.len() - 1) as u32).to_le_bytes());
    out.extend_from_slice(&t[1..]);
    let name = &r.message.as_bytes()[..r.message.len().min(u8::MAX as usize)];
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.extend_from_slice(&(r.data.len() as u32).to_le_bytes());
    out.extend_from_slice(&r.data);
}

/// A cursor over bytes that reports where a field did not fit.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, at: 0 }
    }
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(FormatError::Truncated {
                at: self.at,
                needed: n,
                len: self.bytes.len(),
            });
        };
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }
    pub(crate) fn u8(&mut self) -> Result<u8, FormatError> {
        Ok(self.take(1)?[0])
    }
    pub(crate) fn u32(&mut self) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("invariant: 4 bytes"),
        ))
    }
    pub(crate) fn u64(&mut self) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("invariant: 8 bytes"),
        ))
    }
    pub(crate) fn format(&mut self) -> Result<(), FormatError> {
        match self.u8()? {
            RECORD_FORMAT => Ok(()),
            found => Err(FormatError::UnknownFormat { found }),
        }
    }
    /// Bytes not read yet.
    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let s = &self.bytes[self.at..];
        self.at = self.bytes.len();
        s
    }
}

/// Decodes an outbox record's payload.
pub fn decode_outbox(bytes: &[u8]) -> Result<OutboxRecord, FormatError> {
    let mut r = Reader::new(bytes);
    r.format()?;
    let created_ms = r.u64()?;
    let stream = r.u64()?;
    let id_override = match r.u8()? {
        0 => None,
        1 => Some((r.u64()?, r.u64()?)),
        _ => {
            return Err(FormatError::Invalid {
                what: "id override",
            })
        }
    };
    let kind = r.u8()?;
    let n = r.u32()? as usize;
    let t = r.take(n)?;
    let target = match kind {
        0 => {
            let (ty, key) = decode_actor(t)?;
            Target::Actor(ty, key)
        }
        1 => Target::Sink(
            std::str::from_utf8(t)
                .map_err(|_| FormatError::Invalid { what: "sink name" })?
                .to_owned(),
        ),
        _ => {
            return Err(FormatError::Invalid {
                what: "target kind",
            })
        }
    };
    let n = r.u8()? as usize;
    let message = std::str::from_utf8(r.take(n)?)
        .map_err(|_| FormatError::Invalid {
            what: "message name",
        })?
        .to_owned();
    let n = r.u32()? as usize;
    let data = r.take(n)?.to_vec();
    if !r.rest().is_empty() {
        return Err(FormatError::Invalid {
            what: "trailing bytes",
        });
    }
    Ok(OutboxRecord {
        created_ms,
        stream,
        id_override,
        target,
        message,
        data,
    })
}

// Format (inbox receipts payload, kind Event): { format u8 = 1 | (stream u64 | seq u64 |
//   at_ms u64) * n }, n >= 1 (the receipts of one delivery; a record written before deliveries
//   were batched holds one, the same bytes)
// Format (inbox table payload, kind Snapshot): { format u8 = 1 | count u32 |
//   (stream u64 | seq u64 | at_ms u64) * count }
/// Encodes inbox entries (receipts: one or more; a table snapshot: any number).
pub fn encode_inbox(out: &mut Vec<u8>, entries: &[(u64, u64, u64)], table: bool) {
    out.push(RECORD_FORMAT);
    if table {
        out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    } else {
        debug_assert!(!entries.is_empty(), "a receipts record has an entry");
    }
    for (s, q, t) in entries {
        out.extend_from_slice(&s.to_le_bytes());
        out.extend_from_slice(&q.to_le_bytes());
        out.extend_from_slice(&t.to_le_bytes());
    }
}

/// Decodes inbox entries written by [`encode_inbox`].
pub fn decode_inbox(bytes: &[u8], table: bool) -> Result<Vec<(u64, u64, u64)>, FormatError> {
    let mut r = Reader::new(bytes);
    r.format()?;
    let n = if table {
        r.u32()? as usize
    } else {
        let rest = r.remaining();
        if rest == 0 || !rest.is_multiple_of(24) {
            return Err(FormatError::Invalid {
                what: "inbox receipts length",
            });
        }
        rest / 24
    };
    let mut out = Vec::with_capacity(n.min(1 << 20));
    for _ in 0..n {
        out.push((r.u64()?, r.u64()?, r.u64()?));
    }
    if !r.rest().is_empty() {
        return Err(FormatError::Invalid {
            what: "trailing bytes",
        });
    }
    Ok(out)
}

// Format (durable state payload, kind Snapshot): { format u8 = 1 | schema_version u16 |
//   version u64 | at_ms u64 | data (postcard, to the end) }
/// Encodes a durable state record.
pub fn encode_state(out: &mut Vec<u8>, schema: u16, version: u64, at_ms: u64, data: &[u8]) {
    out.push(RECORD_FORMAT);
    out.extend_from_slice(&schema.to_le_bytes());
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&at_ms.to_le_bytes());
    out.extend_from_slice(data);
}

/// Decodes a durable state record: (schema version, version, at_ms, data).
pub fn decode_state(bytes: &[u8]) -> Result<(u16, u64, u64, &[u8]), FormatError> {
    let mut r = Reader::new(bytes);
    r.format()?;
    let schema = u16::from_le_bytes(r.take(2)?.try_into().expect("invariant: 2 bytes"));
    let version = r.u64()?;
    let at = r.u64()?;
    Ok((schema, version, at, r.rest()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbox_record_round_trips_and_rejects_truncation() {
        let r = OutboxRecord {
            created_ms: 7,
            stream: 9,
            id_override: Some((1, 2)),
            target: Target::Actor("account".into(), ActorKey::U64(5)),
            message: "Credit".into(),
            data: vec![1, 2, 3],
        };
        let mut b = Vec::new();
        encode_outbox(&mut b, &r);
        assert_eq!(decode_outbox(&b).unwrap(), r);
        for cut in 0..b.len() {
            assert!(decode_outbox(&b[..cut]).is_err(), "cut at {cut} accepted");
        }
        let s = OutboxRecord {
            target: Target::Sink("pg".into()),
            id_override: None,
            ..r
        };
        let mut b = Vec::new();
        encode_outbox(&mut b, &s);
        assert_eq!(decode_outbox(&b).unwrap(), s);
    }

    #[test]
    fn inbox_and_state_round_trip() {
        let mut b = Vec::new();
        encode_inbox(&mut b, &[(1, 2, 3), (4, 5, 6)], true);
        assert_eq!(decode_inbox(&b, true).unwrap(), vec![(1, 2, 3), (4, 5, 6)]);
        let mut b = Vec::new();
        encode_inbox(&mut b, &[(1, 2, 3)], false);
        assert_eq!(decode_inbox(&b, false).unwrap(), vec![(1, 2, 3)]);
        // A delivery's receipts: several entries in one record; a cut one is refused.
        let mut b = Vec::new();
        encode_inbox(&mut b, &[(1, 2, 3), (7, 8, 9), (4, 5, 6)], false);
        assert_eq!(
            decode_inbox(&b, false).unwrap(),
            vec![(1, 2, 3), (7, 8, 9), (4, 5, 6)]
        );
        assert!(decode_inbox(&b[..b.len() - 1], false).is_err());
        assert!(decode_inbox(&b[..1], false).is_err());
        let mut b = Vec::new();
        encode_state(&mut b, 3, 4, 5, b"xy");
        assert_eq!(decode_state(&b).unwrap(), (3, 4, 5, &b"xy"[..]));
        let id = ActorId::new("t", ActorKey::from("k"));
        let k = actor_key(STATE_PREFIX, &id);
        assert_eq!(
            decode_actor(&k[2..]).unwrap(),
            ("t".to_owned(), ActorKey::from("k"))
        );
    }
}
