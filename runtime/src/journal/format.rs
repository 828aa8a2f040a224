//! The journal's storage format: log keys, event and snapshot records, and the hash chain.
//!
//! Everything here is plain bytes in, plain bytes out, so the offline tools (`quark journal`)
//! read exactly what the runtime writes. The full table is in `docs/JOURNALING.md`.

use quark_placement::ActorKey;
use sha2::{Digest, Sha256};

/// Bytes of a chain hash (SHA-256).
pub const HASH_BYTES: usize = 32;

/// A chain hash. The first event of a stream links to [`GENESIS`].
pub type Hash = [u8; HASH_BYTES];

/// The `prev_hash` of an actor's first event.
pub const GENESIS: Hash = [0; HASH_BYTES];

/// Format byte of event and snapshot records written by this version.
pub const RECORD_FORMAT: u8 = 1;

const KEY_MAGIC: &[u8; 2] = b"qj";
const STREAM_EVENTS: u8 = b'e';
const STREAM_SNAPSHOTS: u8 = b's';
const KEY_U64: u8 = 0;
const KEY_STR: u8 = 1;
const KEY_BYTES: u8 = 2;

/// Which of an actor's two log keys a record is under.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Stream {
    /// The actor's events.
    Events,
    /// The actor's snapshots.
    Snapshots,
}

/// A journal log key, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamKey {
    /// Events or snapshots.
    pub stream: Stream,
    /// The actor type's name.
    pub type_name: String,
    /// The actor's key.
    pub key: ActorKey,
}

impl StreamKey {
    /// The actor id as `type/key` with the key in its unambiguous form (`account/"ann"`),
    /// the way [`quark_placement::ActorId`]'s `Debug` shows it.
    pub fn actor(&self) -> String {
        format!("{}/{:?}", self.type_name, self.key)
    }
}

/// Why journal bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// The record is shorter than its fields say.
    #[error("journal record truncated: needed {needed} bytes at offset {at}, have {len}")]
    Truncated {
        /// Offset of the field that did not fit.
        at: usize,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes available.
        len: usize,
    },
    /// The format byte is not one this version reads.
    #[error(
        "journal record format {found} is not supported (this build reads format {RECORD_FORMAT})"
    )]
    UnknownFormat {
        /// The format byte found.
        found: u8,
    },
    /// A name field is not UTF-8.
    #[error("journal record has a type name that is not UTF-8")]
    BadName,
    /// Bytes after the last field.
    #[error("journal record has {extra} bytes after its last field")]
    Trailing {
        /// How many.
        extra: usize,
    },
    /// A log key that is not a journal key.
    #[error("not a journal key")]
    NotJournalKey,
}

// Format (log key): { "qj" | stream u8 ('e' | 's') | type_len u8 | type name (UTF-8) |
//   key tag u8 (0 = u64, 1 = str, 2 = bytes) | key (u64 LE, or the raw bytes to the end) }
/// The log key of an actor's `stream`.
pub fn stream_key(stream: Stream, type_name: &str, key: &ActorKey) -> Vec<u8> {
    debug_assert!(type_name.len() <= u8::MAX as usize, "type names are short");
    let mut out = Vec::with_capacity(16 + type_name.len());
    out.extend_from_slice(KEY_MAGIC);
    out.push(match stream {
        Stream::Events => STREAM_EVENTS,
        Stream::Snapshots => STREAM_SNAPSHOTS,
    });
    // The same `type_len | type | key tag | key` layout as every actor reference in the log.
    crate::outbox::format::encode_actor(&mut out, type_name, key);
    out
}

/// The common prefix of the `stream` keys of every actor of type `type_name`.
pub fn type_prefix(stream: Stream, type_name: &str) -> Vec<u8> {
    let mut k = stream_key(stream, type_name, &ActorKey::U64(0));
    k.truncate(4 + type_name.len().min(u8::MAX as usize));
    k
}

/// The key of the other stream of the same actor (events ↔ snapshots).
pub fn sibling_key(key: &[u8], stream: Stream) -> Option<Vec<u8>> {
    if key.len() < 3 || &key[..2] != KEY_MAGIC {
        return None;
    }
    let mut k = key.to_vec();
    k[2] = match stream {
        Stream::Events => STREAM_EVENTS,
        Stream::Snapshots => STREAM_SNAPSHOTS,
    };
    Some(k)
}

/// Parses a log key written by [`stream_key`]; `Err(NotJournalKey)` for other keys.
pub fn parse_stream_key(bytes: &[u8]) -> Result<StreamKey, FormatError> {
    let bad = FormatError::NotJournalKey;
    if bytes.len() < 5 || &bytes[..2] != KEY_MAGIC {
        return Err(bad);
    }
    let stream = match bytes[2] {
        STREAM_EVENTS => Stream::Events,
        STREAM_SNAPSHOTS => Stream::Snapshots,
        _ => return Err(bad),
    };
    let name_len = bytes[3] as usize;
    let name_end = 4 + name_len;
    if bytes.len() < name_end + 1 {
        return Err(bad);
    }
    let type_name = std::str::from_utf8(&bytes[4..name_end])
        .map_err(|_| FormatError::BadName)?
        .to_owned();
    let rest = &bytes[name_end + 1..];
    let key = match bytes[name_end] {
        KEY_U64 => {
            let b: [u8; 8] = rest.try_into().map_err(|_| FormatError::NotJournalKey)?;
            ActorKey::U64(u64::from_le_bytes(b))
        }
        KEY_STR => ActorKey::from(std::str::from_utf8(rest).map_err(|_| FormatError::BadName)?),
        KEY_BYTES => ActorKey::from(rest),
        _ => return Err(bad),
    };
    Ok(StreamKey {
        stream,
        type_name,
        key,
    })
}

/// One stored event, decoded (its data still in the user's encoding).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventRecord {
    /// Schema version of `data`, as written.
    pub schema_version: u16,
    /// The actor's version after this event (1 for its first event).
    pub version: u64,
    /// Wall-clock milliseconds since the Unix epoch when the event was persisted.
    pub timestamp_ms: u64,
    /// The event's type name (for filtering and upcasting).
    pub event_type: String,
    /// The event, encoded (postcard by default; see `docs/JOURNALING.md`).
    pub data: Vec<u8>,
    /// The hash of the actor's previous event ([`GENESIS`] for the first).
    pub prev_hash: Hash,
}

// Format (event payload): { format u8 = 1 | schema_version u16 | version u64 | timestamp_ms u64 |
//   type_len u8 | event type name | data_len u32 | data | prev_hash [32] }, integers LE.
// Chain: hash(event) = SHA-256(log key || payload), so an event cannot be moved to another
// stream, and each event's prev_hash is the hash of the one before it.
/// Encodes an event record's payload.
pub fn encode_event(
    out: &mut Vec<u8>,
    schema_version: u16,
    version: u64,
    timestamp_ms: u64,
    event_type: &str,
    data: &[u8],
    prev_hash: &Hash,
) {
    let name = &event_type.as_bytes()[..event_type.len().min(u8::MAX as usize)];
    out.reserve(1 + 2 + 8 + 8 + 1 + name.len() + 4 + data.len() + HASH_BYTES);
    put_head(out, schema_version, version, timestamp_ms);
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(prev_hash);
}

/// Decodes an event record's payload.
pub fn decode_event(payload: &[u8]) -> Result<EventRecord, FormatError> {
    let mut r = Reader::new(payload);
    let (schema_version, version, timestamp_ms) = r.head()?;
    let name_len = r.u8()? as usize;
    let event_type = std::str::from_utf8(r.take(name_len)?)
        .map_err(|_| FormatError::BadName)?
        .to_owned();
    let data_len = r.u32()? as usize;
    let data = r.take(data_len)?.to_vec();
    let prev_hash: Hash = r.take(HASH_BYTES)?.try_into().expect("took HASH_BYTES");
    r.finish()?;
    Ok(EventRecord {
        schema_version,
        version,
        timestamp_ms,
        event_type,
        data,
        prev_hash,
    })
}

/// The chain hash of an event record: SHA-256 over its log key and payload.
pub fn event_hash(log_key: &[u8], payload: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update(log_key);
    h.update(payload);
    h.finalize().into()
}

/// One stored snapshot, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotRecord {
    /// Schema version of `data`, as written.
    pub schema_version: u16,
    /// The actor's version the snapshot captures (events 1..=version applied).
    pub version: u64,
    /// Wall-clock milliseconds since the Unix epoch when the snapshot was written.
    pub timestamp_ms: u64,
    /// The chain hash of the event at `version` ([`GENESIS`] at version 0).
    pub chain_hash: Hash,
    /// The state, encoded.
    pub data: Vec<u8>,
}

// Format (snapshot payload): { format u8 = 1 | schema_version u16 | version u64 |
//   timestamp_ms u64 | chain_hash [32] | data_len u32 | data }, integers LE.
/// Encodes a snapshot record's payload.
pub fn encode_snapshot(
    out: &mut Vec<u8>,
    schema_version: u16,
    version: u64,
    timestamp_ms: u64,
    chain_hash: &Hash,
    data: &[u8],
) {
    out.reserve(1 + 2 + 8 + 8 + HASH_BYTES + 4 + data.len());
    put_head(out, schema_version, version, timestamp_ms);
    out.extend_from_slice(chain_hash);
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(data);
}

/// Decodes a snapshot record's payload.
pub fn decode_snapshot(payload: &[u8]) -> Result<SnapshotRecord, FormatError> {
    let mut r = Reader::new(payload);
    let (schema_version, version, timestamp_ms) = r.head()?;
    let chain_hash: Hash = r.take(HASH_BYTES)?.try_into().expect("took HASH_BYTES");
    let data_len = r.u32()? as usize;
    let data = r.take(data_len)?.to_vec();
    r.finish()?;
    Ok(SnapshotRecord {
        schema_version,
        version,
        timestamp_ms,
        chain_hash,
        data,
    })
}

/// Lowercase hex of a hash (for reports).
pub fn hex(hash: &Hash) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

// Format (head shared by event and snapshot payloads):
//   { format u8 = 1 | schema_version u16 | version u64 | timestamp_ms u64 }
fn put_head(out: &mut Vec<u8>, schema_version: u16, version: u64, timestamp_ms: u64) {
    out.push(RECORD_FORMAT);
    out.extend_from_slice(&schema_version.to_le_bytes());
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&timestamp_ms.to_le_bytes());
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, at: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(FormatError::Truncated {
                at: self.at,
                needed: n,
                len: self.bytes.len(),
            });
        };
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, FormatError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, FormatError> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("took 2"),
        ))
    }

    fn u32(&mut self) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("took 4"),
        ))
    }

    fn u64(&mut self) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("took 8"),
        ))
    }

    /// Reads the shared head: (schema version, version, timestamp).
    fn head(&mut self) -> Result<(u16, u64, u64), FormatError> {
        let format = self.u8()?;
        if format != RECORD_FORMAT {
            return Err(FormatError::UnknownFormat { found: format });
        }
        Ok((self.u16()?, self.u64()?, self.u64()?))
    }

    fn finish(self) -> Result<(), FormatError> {
        match self.bytes.len() - self.at {
            0 => Ok(()),
            extra => Err(FormatError::Trailing { extra }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_differ_by_stream() {
        for key in [
            ActorKey::U64(7),
            ActorKey::from("ann"),
            ActorKey::from(&b"\x00\xff"[..]),
        ] {
            let e = stream_key(Stream::Events, "account", &key);
            let s = stream_key(Stream::Snapshots, "account", &key);
            assert_ne!(e, s);
            let parsed = parse_stream_key(&e).unwrap();
            assert_eq!(parsed.stream, Stream::Events);
            assert_eq!(parsed.type_name, "account");
            assert_eq!(parsed.key, key);
            assert_eq!(parse_stream_key(&s).unwrap().stream, Stream::Snapshots);
        }
        assert_eq!(
            parse_stream_key(b"other-key"),
            Err(FormatError::NotJournalKey)
        );
    }

    #[test]
    fn type_prefix_and_sibling_keys() {
        let k = stream_key(Stream::Snapshots, "account", &ActorKey::from("ann"));
        assert!(k.starts_with(&type_prefix(Stream::Snapshots, "account")));
        assert!(!k.starts_with(&type_prefix(Stream::Snapshots, "accoun")));
        assert!(!k.starts_with(&type_prefix(Stream::Events, "account")));
        let e = sibling_key(&k, Stream::Events).unwrap();
        assert_eq!(
            e,
            stream_key(Stream::Events, "account", &ActorKey::from("ann"))
        );
    }

    #[test]
    fn event_round_trip_and_every_truncation_is_an_error() {
        let mut p = Vec::new();
        encode_event(
            &mut p,
            3,
            42,
            1_700_000_000_000,
            "Deposited",
            b"data",
            &[9; 32],
        );
        let e = decode_event(&p).unwrap();
        assert_eq!(
            (
                e.schema_version,
                e.version,
                e.event_type.as_str(),
                &e.data[..]
            ),
            (3, 42, "Deposited", &b"data"[..])
        );
        assert_eq!(e.prev_hash, [9; 32]);
        for cut in 0..p.len() {
            assert!(decode_event(&p[..cut]).is_err(), "cut at {cut}");
        }
        p.push(0);
        assert_eq!(decode_event(&p), Err(FormatError::Trailing { extra: 1 }));
    }

    #[test]
    fn snapshot_round_trip() {
        let mut p = Vec::new();
        encode_snapshot(&mut p, 1, 1000, 5, &[1; 32], b"state");
        let s = decode_snapshot(&p).unwrap();
        assert_eq!(
            (s.version, s.timestamp_ms, &s.data[..]),
            (1000, 5, &b"state"[..])
        );
        p[0] = 9;
        assert_eq!(
            decode_snapshot(&p),
            Err(FormatError::UnknownFormat { found: 9 })
        );
    }

    #[test]
    fn hash_covers_key_and_every_payload_byte() {
        let mut p = Vec::new();
        encode_event(&mut p, 1, 1, 0, "E", b"x", &GENESIS);
        let k = stream_key(Stream::Events, "t", &ActorKey::U64(1));
        let h = event_hash(&k, &p);
        let k2 = stream_key(Stream::Events, "t", &ActorKey::U64(2));
        assert_ne!(h, event_hash(&k2, &p));
        for i in 0..p.len() {
            let mut q = p.clone();
            q[i] ^= 1;
            assert_ne!(h, event_hash(&k, &q), "byte {i}");
        }
    }
}
