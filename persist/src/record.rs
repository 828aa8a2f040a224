//! Records and batches: the in-memory types and the batch codec (the unit of atomicity).
//!
//! A batch is encoded as one frame with one CRC32C over everything after the checksum field, so
//! after a crash a batch is either entirely readable or rejected as a whole. The byte layout is
//! in `docs/LOG_FORMAT.md` and above each encoder.

/// Size of the batch frame header in bytes.
pub(crate) const BATCH_HEADER_BYTES: usize = 24;
/// Size of the per-record header in bytes.
pub(crate) const RECORD_HEADER_BYTES: usize = 40;
/// Batches start and end on this alignment (zero padding), so a recovery scan can probe
/// aligned offsets only.
pub(crate) const BATCH_ALIGN: usize = 8;

/// Record flag: this record was copied forward by compaction; its `origin_lsn` is the LSN it
/// was first written at.
pub const FLAG_FORWARDED: u8 = 0x01;
/// Mask of the flags this format version knows; a record with other bits set is rejected.
const FLAGS_KNOWN: u8 = FLAG_FORWARDED;

/// What a record means to the log. The log interprets [`RecordKind::Snapshot`] (supersedes
/// every earlier record of the same key) and [`RecordKind::Truncate`] (supersedes the records
/// of its key below a bound); superseded records become garbage for compaction and disappear
/// from [`crate::Log::key_lsns`].
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// An ordinary record (an event, a state change, an outbox message...).
    Event,
    /// A snapshot: the full state of its key; earlier records of the key are superseded.
    Snapshot,
    /// A truncation barrier (on-disk kind 3, see [`Batch::truncate`]): every record of its key
    /// whose origin LSN is below `min(bound, own origin LSN)` is superseded, where the bound
    /// is the payload (exactly 8 bytes, a little-endian `u64`). Never listed by
    /// [`crate::Log::key_lsns`].
    Truncate,
}

impl RecordKind {
    fn to_u8(self) -> u8 {
        match self {
            RecordKind::Event => 1,
            RecordKind::Snapshot => 2,
            RecordKind::Truncate => 3,
        }
    }

    fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(RecordKind::Event),
            2 => Some(RecordKind::Snapshot),
            3 => Some(RecordKind::Truncate),
            _ => None,
        }
    }
}

/// Payload bytes of a [`RecordKind::Truncate`] record (the bound, `u64` little-endian).
pub(crate) const TRUNCATE_PAYLOAD_BYTES: usize = 8;

/// The bound of a truncate record's payload; `None` if it is not exactly 8 bytes.
pub(crate) fn truncate_bound(payload: &[u8]) -> Option<u64> {
    let b: [u8; TRUNCATE_PAYLOAD_BYTES] = payload.try_into().ok()?;
    Some(u64::from_le_bytes(b))
}

/// The floor a record sets for its key: records of the key with a smaller origin LSN are
/// superseded. A snapshot's floor is its origin; a truncate's is `min(bound, origin)` (a
/// truncate never reaches records appended after it); an event sets none (0).
pub(crate) fn floor_of(kind: RecordKind, origin: u64, payload: &[u8]) -> u64 {
    match kind {
        RecordKind::Event => 0,
        RecordKind::Snapshot => origin,
        RecordKind::Truncate => truncate_bound(payload).unwrap_or(0).min(origin),
    }
}

/// One record to append, part of a [`Batch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewRecord {
    /// Kind of record.
    pub kind: RecordKind,
    /// Key (e.g. an actor id); empty means "no key": such records are never superseded.
    pub key: Vec<u8>,
    /// Opaque payload (the caller versions its own schema inside it).
    pub payload: Vec<u8>,
    /// Wall-clock milliseconds after which compaction may drop the record; `None` = never.
    pub expires_at_ms: Option<u64>,
}

/// An atomic group of records: after a crash either all of them are in the log or none is.
///
/// Bounds: at most `u16::MAX` bytes of key and `u32::MAX` bytes of payload per record, and the
/// encoded batch must fit in one segment (checked by [`crate::Log::append`]).
///
/// ```
/// use quark_persist::Batch;
/// let mut batch = Batch::new();
/// batch.event(b"actor-1", b"deposited 10");
/// batch.snapshot(b"actor-2", b"balance=7");
/// assert_eq!(batch.len(), 2);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    pub(crate) records: Vec<NewRecord>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a record.
    pub fn push(&mut self, record: NewRecord) -> &mut Self {
        self.records.push(record);
        self
    }

    /// Adds an [`RecordKind::Event`] record that never expires.
    pub fn event(&mut self, key: &[u8], payload: &[u8]) -> &mut Self {
        self.push(NewRecord {
            kind: RecordKind::Event,
            key: key.to_vec(),
            payload: payload.to_vec(),
            expires_at_ms: None,
        })
    }

    /// Adds a [`RecordKind::Snapshot`] record that never expires.
    pub fn snapshot(&mut self, key: &[u8], payload: &[u8]) -> &mut Self {
        self.push(NewRecord {
            kind: RecordKind::Snapshot,
            key: key.to_vec(),
            payload: payload.to_vec(),
            expires_at_ms: None,
        })
    }

    /// Adds a [`RecordKind::Truncate`] record: once appended, every record of `key` whose
    /// origin LSN is below `before_lsn` is superseded (dead for compaction, gone from
    /// [`crate::Log::key_lsns`], also after recovery); records of the key from `before_lsn` on
    /// stay live. The bound is capped at the truncate record's own LSN: a truncate never
    /// supersedes records appended after it, so `truncate(key, u64::MAX)` erases everything
    /// of the key written so far and the key can be written again afterwards.
    ///
    /// The truncate record itself stays live (it is copied forward by compaction) while it is
    /// the key's latest barrier: a later truncate with a higher bound or a later snapshot
    /// supersedes it. Use [`crate::Log::scrub`] to also remove the superseded bytes from disk.
    ///
    /// ```
    /// use quark_persist::{Batch, RecordKind};
    /// let mut batch = Batch::new();
    /// batch.truncate(b"actor-1", 1_000); // drop the events before LSN 1000
    /// assert_eq!(batch.records()[0].kind, RecordKind::Truncate);
    /// assert_eq!(batch.records()[0].payload, 1_000u64.to_le_bytes());
    /// ```
    pub fn truncate(&mut self, key: &[u8], before_lsn: u64) -> &mut Self {
        self.push(NewRecord {
            kind: RecordKind::Truncate,
            key: key.to_vec(),
            payload: before_lsn.to_le_bytes().to_vec(),
            expires_at_ms: None,
        })
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// True when the batch holds no record.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The records, in append order.
    pub fn records(&self) -> &[NewRecord] {
        &self.records
    }

    /// Bytes this batch occupies on disk once encoded (header, records and padding).
    pub fn encoded_bytes(&self) -> usize {
        encoded_len(self.records.iter().map(|r| (r.key.len(), r.payload.len())))
    }
}

/// A record read back from the log; every byte of it was covered by a verified checksum.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Position of this record in the log (monotonic, unique, never reused).
    pub lsn: u64,
    /// LSN the record was first written at (differs from `lsn` after a compaction copy).
    pub origin_lsn: u64,
    /// Kind.
    pub kind: RecordKind,
    /// Flags ([`FLAG_FORWARDED`]).
    pub flags: u8,
    /// Wall-clock milliseconds when first appended (from [`crate::LogIo::now_ms`]).
    pub timestamp_ms: u64,
    /// Expiry in wall-clock milliseconds; `None` = never.
    pub expires_at_ms: Option<u64>,
    /// Key (empty = none).
    pub key: Vec<u8>,
    /// Payload.
    pub payload: Vec<u8>,
}

/// Borrowed view of a record while encoding (new or copied-forward).
pub(crate) struct EncodeRecord<'a> {
    pub kind: RecordKind,
    pub flags: u8,
    pub origin_lsn: Option<u64>,
    pub timestamp_ms: u64,
    pub expires_at_ms: Option<u64>,
    pub key: &'a [u8],
    pub payload: &'a [u8],
}

/// Encoded length (with padding) of a batch of records with these (key, payload) lengths.
pub(crate) fn encoded_len(lens: impl Iterator<Item = (usize, usize)>) -> usize {
    let raw: usize = BATCH_HEADER_BYTES
        + lens
            .map(|(k, p)| RECORD_HEADER_BYTES + k + p)
            .sum::<usize>();
    raw.div_ceil(BATCH_ALIGN) * BATCH_ALIGN
}

/// Bytes one record occupies inside its batch (header + key + payload), used for liveness
/// accounting.
pub(crate) fn record_bytes(key_len: usize, payload_len: usize) -> u64 {
    (RECORD_HEADER_BYTES + key_len + payload_len) as u64
}

// Format (batch frame, little-endian, 8-byte aligned, zero padded):
//   { batch_len u32 | crc32c u32 | first_lsn u64 | record_count u32 | synced_before u32
//     | record * record_count | zero padding to a multiple of 8 }
//   batch_len counts every byte of the frame including header and padding.
//   synced_before: segment offset below which the segment was already durable (fdatasync'd)
//   when this batch was queued; recovery uses it to tell a torn tail from older corruption.
//   crc32c (Castagnoli) covers bytes [8, batch_len) of the frame.
// Format (record, little-endian, inside a batch):
//   { record_len u32 | kind u8 | flags u8 | key_len u16 | lsn u64 | origin_lsn u64
//     | timestamp_ms u64 | expires_at_ms u64 (0 = never) | key [key_len] | payload [..] }
//   record_len counts the 40-byte header, key and payload. lsn = first_lsn + index.
//   kind: 1 = Event, 2 = Snapshot, 3 = Truncate (payload = { before_lsn u64 }, exactly 8 bytes).
/// Appends the encoded batch to `out`; returns its encoded length. The caller has checked the
/// key/payload bounds ([`check_bounds`]).
pub(crate) fn encode_batch<'a>(
    out: &mut Vec<u8>,
    first_lsn: u64,
    synced_before: u32,
    records: impl ExactSizeIterator<Item = EncodeRecord<'a>>,
) -> usize {
    let start = out.len();
    let count = records.len();
    out.extend_from_slice(&[0u8; 4]); // batch_len, patched below
    out.extend_from_slice(&[0u8; 4]); // crc32c, patched below
    out.extend_from_slice(&first_lsn.to_le_bytes());
    out.extend_from_slice(&(count as u32).to_le_bytes());
    out.extend_from_slice(&synced_before.to_le_bytes());
    for (i, r) in records.enumerate() {
        let lsn = first_lsn + i as u64;
        let record_len = RECORD_HEADER_BYTES + r.key.len() + r.payload.len();
        out.extend_from_slice(&(record_len as u32).to_le_bytes());
        out.push(r.kind.to_u8());
        out.push(r.flags);
        out.extend_from_slice(&(r.key.len() as u16).to_le_bytes());
        out.extend_from_slice(&lsn.to_le_bytes());
        out.extend_from_slice(&r.origin_lsn.unwrap_or(lsn).to_le_bytes());
        out.extend_from_slice(&r.timestamp_ms.to_le_bytes());
        out.extend_from_slice(&r.expires_at_ms.unwrap_or(0).to_le_bytes());
        out.extend_from_slice(r.key);
        out.extend_from_slice(r.payload);
    }
    let padded = (out.len() - start).div_ceil(BATCH_ALIGN) * BATCH_ALIGN;
    out.resize(start + padded, 0);
    let frame = &mut out[start..];
    frame[0..4].copy_from_slice(&(padded as u32).to_le_bytes());
    let crc = crc32c::crc32c(&frame[8..]);
    frame[4..8].copy_from_slice(&crc.to_le_bytes());
    padded
}

/// Why a batch does not fit the format's field widths.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum BoundError {
    Empty,
    KeyTooLong { index: usize, key_bytes: usize },
    PayloadTooLong { index: usize, payload_bytes: usize },
    BadTruncate { index: usize, payload_bytes: usize },
}

/// Checks the per-field bounds of a batch before encoding.
pub(crate) fn check_bounds(records: &[NewRecord]) -> Result<(), BoundError> {
    if records.is_empty() {
        return Err(BoundError::Empty);
    }
    for (index, r) in records.iter().enumerate() {
        if r.key.len() > u16::MAX as usize {
            return Err(BoundError::KeyTooLong {
                index,
                key_bytes: r.key.len(),
            });
        }
        if RECORD_HEADER_BYTES + r.key.len() + r.payload.len() > u32::MAX as usize / 2 {
            return Err(BoundError::PayloadTooLong {
                index,
                payload_bytes: r.payload.len(),
            });
        }
        if r.kind == RecordKind::Truncate && r.payload.len() != TRUNCATE_PAYLOAD_BYTES {
            return Err(BoundError::BadTruncate {
                index,
                payload_bytes: r.payload.len(),
            });
        }
    }
    Ok(())
}

/// Outcome of decoding the bytes at one position of a segment.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decoded<'a> {
    /// A batch whose checksum and structure verified.
    Batch(DecodedBatch<'a>),
    /// Zero bytes where a header would start: the end of written data (preallocated space).
    End,
    /// Not a valid batch (torn, corrupt, or stale), with the reason.
    Invalid(Invalid),
}

/// A verified batch, borrowing the bytes it was decoded from.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct DecodedBatch<'a> {
    /// Encoded length including padding (the next batch starts this many bytes later).
    pub len: usize,
    pub first_lsn: u64,
    /// Segment offset below which the segment was durable when the batch was queued.
    pub synced_before: u64,
    pub records: Vec<RecordView<'a>>,
}

/// A verified record borrowing its key and payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RecordView<'a> {
    pub lsn: u64,
    pub origin_lsn: u64,
    pub kind: RecordKind,
    pub flags: u8,
    pub timestamp_ms: u64,
    pub expires_at_ms: Option<u64>,
    pub key: &'a [u8],
    pub payload: &'a [u8],
}

impl RecordView<'_> {
    /// Copies into an owned [`Record`].
    pub fn to_record(&self) -> Record {
        Record {
            lsn: self.lsn,
            origin_lsn: self.origin_lsn,
            kind: self.kind,
            flags: self.flags,
            timestamp_ms: self.timestamp_ms,
            expires_at_ms: self.expires_at_ms,
            key: self.key.to_vec(),
            payload: self.payload.to_vec(),
        }
    }
}

/// Why bytes are not a valid batch.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Invalid {
    /// Fewer bytes remain than the header or the declared length.
    Truncated,
    /// The declared length is not a multiple of 8 or is smaller than a header.
    BadLength,
    /// The checksum does not match the bytes.
    Checksum,
    /// The checksum matches but a record's structure is inconsistent (a format bug or a
    /// forged frame).
    BadRecord,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Invalid::Truncated => "truncated batch",
            Invalid::BadLength => "bad batch length",
            Invalid::Checksum => "checksum mismatch",
            Invalid::BadRecord => "malformed record inside a checksummed batch",
        })
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// Decodes the batch that starts at `buf[0]`. Never panics on any input; yields records only
/// when the checksum over the whole frame matches and every record is well-formed.
pub(crate) fn decode_batch(buf: &[u8]) -> Decoded<'_> {
    if buf.len() < 4 {
        return Decoded::End; // no room for a frame
    }
    let batch_len = u32_at(buf, 0) as usize;
    if batch_len == 0 {
        // An end marker or preallocated zeros; a real frame never has length 0. What follows
        // may be stale bytes of a recycled segment.
        return Decoded::End;
    }
    if buf.len() < BATCH_HEADER_BYTES {
        return Decoded::Invalid(Invalid::Truncated);
    }
    if batch_len < BATCH_HEADER_BYTES + RECORD_HEADER_BYTES || batch_len & (BATCH_ALIGN - 1) != 0 {
        return Decoded::Invalid(Invalid::BadLength);
    }
    if batch_len > buf.len() {
        return Decoded::Invalid(Invalid::Truncated);
    }
    let frame = &buf[..batch_len];
    if crc32c::crc32c(&frame[8..]) != u32_at(frame, 4) {
        return Decoded::Invalid(Invalid::Checksum);
    }
    let first_lsn = u64_at(frame, 8);
    let count = u32_at(frame, 16) as usize;
    if count == 0 || first_lsn.checked_add(count as u64).is_none() {
        return Decoded::Invalid(Invalid::BadRecord);
    }
    let mut records = Vec::with_capacity(count.min(batch_len / RECORD_HEADER_BYTES));
    let mut at = BATCH_HEADER_BYTES;
    for i in 0..count {
        if frame.len() - at < RECORD_HEADER_BYTES {
            return Decoded::Invalid(Invalid::BadRecord);
        }
        let record_len = u32_at(frame, at) as usize;
        let kind = RecordKind::from_u8(frame[at + 4]);
        let flags = frame[at + 5];
        let key_len = u16_at(frame, at + 6) as usize;
        let lsn = u64_at(frame, at + 8);
        let origin_lsn = u64_at(frame, at + 16);
        let timestamp_ms = u64_at(frame, at + 24);
        let expires = u64_at(frame, at + 32);
        let Some(kind) = kind else {
            return Decoded::Invalid(Invalid::BadRecord);
        };
        if record_len < RECORD_HEADER_BYTES + key_len
            || record_len > frame.len() - at
            || flags & !FLAGS_KNOWN != 0
            || lsn != first_lsn + i as u64
            || origin_lsn > lsn
            || (kind == RecordKind::Truncate
                && record_len != RECORD_HEADER_BYTES + key_len + TRUNCATE_PAYLOAD_BYTES)
        {
            return Decoded::Invalid(Invalid::BadRecord);
        }
        let key_at = at + RECORD_HEADER_BYTES;
        let payload_at = key_at + key_len;
        let end = at + record_len;
        records.push(RecordView {
            lsn,
            origin_lsn,
            kind,
            flags,
            timestamp_ms,
            expires_at_ms: (expires != 0).then_some(expires),
            key: &frame[key_at..payload_at],
            payload: &frame[payload_at..end],
        });
        at = end;
    }
    // Only zero padding (less than one alignment unit) may follow the last record.
    if frame.len() - at >= BATCH_ALIGN || frame[at..].iter().any(|&b| b != 0) {
        return Decoded::Invalid(Invalid::BadRecord);
    }
    Decoded::Batch(DecodedBatch {
        len: batch_len,
        first_lsn,
        synced_before: u32_at(frame, 20) as u64,
        records,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(first_lsn: u64, batch: &Batch) -> Vec<u8> {
        let mut out = Vec::new();
        let n = encode_batch(
            &mut out,
            first_lsn,
            64,
            batch.records.iter().map(|r| EncodeRecord {
                kind: r.kind,
                flags: 0,
                origin_lsn: None,
                timestamp_ms: 77,
                expires_at_ms: r.expires_at_ms,
                key: &r.key,
                payload: &r.payload,
            }),
        );
        assert_eq!(n, out.len());
        assert_eq!(n, batch.encoded_bytes());
        out
    }

    #[test]
    fn round_trip_keeps_every_field() {
        let mut b = Batch::new();
        b.event(b"k1", b"hello").snapshot(b"", b"").push(NewRecord {
            kind: RecordKind::Event,
            key: vec![9; 300],
            payload: vec![1; 1000],
            expires_at_ms: Some(123),
        });
        let bytes = enc(42, &b);
        assert_eq!(bytes.len() % BATCH_ALIGN, 0);
        let Decoded::Batch(d) = decode_batch(&bytes) else {
            panic!("valid batch must decode")
        };
        assert_eq!(d.first_lsn, 42);
        assert_eq!(d.len, bytes.len());
        assert_eq!(d.records.len(), 3);
        for (i, (got, want)) in d.records.iter().zip(b.records()).enumerate() {
            assert_eq!(got.lsn, 42 + i as u64);
            assert_eq!(got.origin_lsn, got.lsn);
            assert_eq!(got.kind, want.kind);
            assert_eq!(got.key, want.key);
            assert_eq!(got.payload, want.payload);
            assert_eq!(got.expires_at_ms, want.expires_at_ms);
            assert_eq!(got.timestamp_ms, 77);
        }
    }

    #[test]
    fn every_single_bit_flip_is_rejected() {
        let mut b = Batch::new();
        b.event(b"key", b"payload bytes");
        let bytes = enc(7, &b);
        for byte in 0..bytes.len() {
            for bit in 0..8 {
                let mut m = bytes.clone();
                m[byte] ^= 1 << bit;
                match decode_batch(&m) {
                    Decoded::Batch(_) => panic!("flip at byte {byte} bit {bit} accepted"),
                    Decoded::End | Decoded::Invalid(_) => {}
                }
            }
        }
    }

    #[test]
    fn zeros_are_end_and_short_garbage_is_invalid() {
        assert_eq!(decode_batch(&[0u8; 64]), Decoded::End);
        assert_eq!(decode_batch(&[]), Decoded::End);
        assert_eq!(
            decode_batch(&[1, 0, 0]),
            Decoded::End,
            "no room for a frame"
        );
        assert_eq!(
            decode_batch(&[1, 0, 0, 0, 9]),
            Decoded::Invalid(Invalid::Truncated)
        );
        assert_eq!(decode_batch(&[0, 0, 0, 0, 9, 9]), Decoded::End);
        let mut b = Batch::new();
        b.event(b"k", b"v");
        let bytes = enc(1, &b);
        assert_eq!(
            decode_batch(&bytes[..bytes.len() - 1]),
            Decoded::Invalid(Invalid::Truncated)
        );
    }

    #[test]
    fn truncate_round_trips_and_a_bad_payload_is_invalid() {
        let mut b = Batch::new();
        b.truncate(b"k", 99);
        let bytes = enc(5, &b);
        let Decoded::Batch(d) = decode_batch(&bytes) else {
            panic!("valid batch must decode")
        };
        assert_eq!(d.records[0].kind, RecordKind::Truncate);
        assert_eq!(truncate_bound(d.records[0].payload), Some(99));
        assert_eq!(floor_of(RecordKind::Truncate, 5, d.records[0].payload), 5);
        assert_eq!(
            floor_of(RecordKind::Truncate, 500, d.records[0].payload),
            99
        );
        // A checksummed frame whose truncate payload is not 8 bytes is rejected.
        let mut bad = Batch::new();
        bad.push(NewRecord {
            kind: RecordKind::Truncate,
            key: b"k".to_vec(),
            payload: vec![1; 7],
            expires_at_ms: None,
        });
        assert_eq!(
            check_bounds(bad.records()),
            Err(BoundError::BadTruncate {
                index: 0,
                payload_bytes: 7
            })
        );
        let bytes = enc(5, &bad);
        assert_eq!(decode_batch(&bytes), Decoded::Invalid(Invalid::BadRecord));
    }

    #[test]
    fn bounds_are_checked() {
        assert_eq!(check_bounds(&[]), Err(BoundError::Empty));
        let mut b = Batch::new();
        b.event(&vec![0; 70_000], b"");
        assert_eq!(
            check_bounds(b.records()),
            Err(BoundError::KeyTooLong {
                index: 0,
                key_bytes: 70_000
            })
        );
    }
}
