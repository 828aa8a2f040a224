//! The on-log records of durable reminders (see `docs/JOBS.md`, "Durable reminders").
//!
//! Six kinds of keys live in a shard's log, every payload starting with [`FORMAT`]:
//!
//! | key | kind | payload |
//! |---|---|---|
//! | `qrg` + group u32 BE | event / snapshot | a [`GroupRecord`]: the reminder table of the actors hashed to the group |
//! | `qrb` + bucket u64 BE | event | a `Vec<`[`Slot`]`>`: reminders due in that time bucket |
//! | `qrc` + coarse bucket u64 BE | event | a `Vec<`[`Slot`]`>`: reminders due in a coarse bucket not yet spread into fine ones |
//! | `qrx` | snapshot | the coarse buckets below it were spread into fine buckets |
//! | `qrw` | snapshot | the watermark: every bucket below it was delivered |
//! | `qrr` | snapshot | the reminder-id high water (ids below it may be in use) |

use serde::{Deserialize, Serialize};

/// The version byte in front of every reminder payload.
pub(crate) const FORMAT: u8 = 1;

pub(crate) const GROUP_PREFIX: &[u8] = b"qrg";
pub(crate) const BUCKET_PREFIX: &[u8] = b"qrb";
pub(crate) const WATERMARK_KEY: &[u8] = b"qrw";
pub(crate) const COARSE_PREFIX: &[u8] = b"qrc";
pub(crate) const EXPANDED_KEY: &[u8] = b"qrx";
pub(crate) const RID_KEY: &[u8] = b"qrr";

/// One reminder as the time index stores it: everything needed to deliver its tick.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Slot {
    /// The actor, encoded as `outbox::format::encode_actor` writes it.
    pub actor: Vec<u8>,
    pub name: String,
    /// The registration's id: unique on the shard, kept by every later occurrence.
    pub rid: u64,
    /// When this occurrence is due (wall-clock ms).
    pub due_ms: u64,
    /// 0 for a one-shot reminder.
    pub period_ms: u64,
}

/// One reminder as an actor's table stores it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Entry {
    pub actor: Vec<u8>,
    pub name: String,
    pub rid: u64,
    /// The first occurrence (wall-clock ms).
    pub first_due_ms: u64,
    pub period_ms: u64,
}

/// A change of a group's reminder table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum GroupRecord {
    /// A registration; replaces the actor's reminder of the same name, if any. `replaces`
    /// says whether it did (a *destructive* change: older time-index slots of the group must
    /// be checked against the table).
    Set { entry: Entry, replaces: bool },
    /// A cancellation (always destructive).
    Del { actor: Vec<u8>, name: String },
    /// The whole table. `destructive` says whether the change it was written for was
    /// destructive; `marker` carries the group's previous destructive origin LSN.
    Snapshot {
        entries: Vec<Entry>,
        destructive: bool,
        marker: u64,
    },
}

impl GroupRecord {
    pub(crate) fn is_destructive(&self) -> bool {
        match self {
            GroupRecord::Set { replaces, .. } => *replaces,
            GroupRecord::Del { .. } => true,
            GroupRecord::Snapshot { destructive, .. } => *destructive,
        }
    }
}

// Format: { FORMAT u8 | postcard(value) }
pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![FORMAT];
    // Postcard into a Vec cannot fail for these plain types.
    let body = postcard::to_allocvec(value).expect("invariant: reminder records always encode");
    out.extend_from_slice(&body);
    out
}

/// Why a stored reminder record could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("reminder record has format {found}, expected {FORMAT}")]
    Format { found: u8 },
    #[error("reminder record is empty")]
    Empty,
    #[error("reminder record does not decode: {0}")]
    Body(#[from] postcard::Error),
}

pub(crate) fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, DecodeError> {
    match bytes.split_first() {
        None => Err(DecodeError::Empty),
        Some((&FORMAT, body)) => Ok(postcard::from_bytes(body)?),
        Some((&found, _)) => Err(DecodeError::Format { found }),
    }
}

pub(crate) fn group_key(group: u32) -> Vec<u8> {
    let mut k = GROUP_PREFIX.to_vec();
    k.extend_from_slice(&group.to_be_bytes());
    k
}

pub(crate) fn bucket_key(bucket: u64) -> Vec<u8> {
    let mut k = BUCKET_PREFIX.to_vec();
    k.extend_from_slice(&bucket.to_be_bytes());
    k
}

pub(crate) fn coarse_key(coarse: u64) -> Vec<u8> {
    let mut k = COARSE_PREFIX.to_vec();
    k.extend_from_slice(&coarse.to_be_bytes());
    k
}

pub(crate) fn bucket_of_key(key: &[u8]) -> Option<u64> {
    let rest = key.strip_prefix(BUCKET_PREFIX)?;
    Some(u64::from_be_bytes(rest.try_into().ok()?))
}

/// The group of an actor (FNV-1a over its encoding).
pub(crate) fn group_of(actor: &[u8], groups: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in actor {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % u64::from(groups.max(1))) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_refuse_other_formats() {
        let r = GroupRecord::Set {
            entry: Entry {
                actor: vec![1, 2],
                name: "n".into(),
                rid: 7,
                first_due_ms: 9,
                period_ms: 0,
            },
            replaces: false,
        };
        let bytes = encode(&r);
        assert_eq!(decode::<GroupRecord>(&bytes).unwrap(), r);
        let mut other = bytes.clone();
        other[0] = 9;
        assert!(matches!(
            decode::<GroupRecord>(&other),
            Err(DecodeError::Format { found: 9 })
        ));
        assert!(matches!(
            decode::<GroupRecord>(&[]),
            Err(DecodeError::Empty)
        ));
        assert_eq!(bucket_of_key(&bucket_key(42)), Some(42));
        assert_eq!(bucket_of_key(b"qrb12"), None);
    }
}
