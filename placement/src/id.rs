//! Actor identity and its stable hash.

use std::fmt;
use std::sync::Arc;

/// The key part of an actor id: a number or a string/bytes chosen by the application.
///
/// Two keys are equal only if they have the same variant and value: `U64(1)` and `Str("1")` are
/// different actors.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ActorKey {
    /// A numeric key.
    U64(u64),
    /// A UTF-8 string key.
    Str(Arc<str>),
    /// An opaque byte key.
    Bytes(Arc<[u8]>),
}

/// The unambiguous form: a string key quoted and escaped (`"c3"`), a number bare (`7`),
/// bytes as `0x…`. The `quark journal` tools print and read keys in this form.
impl fmt::Debug for ActorKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ActorKey::Str(s) => write!(f, "{s:?}"),
            _ => fmt::Display::fmt(self, f),
        }
    }
}

/// The key as the application wrote it: a string key as is (`c3`), a number in decimal,
/// bytes as `0x…` in hex. `Str("7")` and `U64(7)` both show as `7`: use the `Debug` form
/// where the two must be told apart.
impl fmt::Display for ActorKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ActorKey::U64(k) => write!(f, "{k}"),
            ActorKey::Str(s) => f.write_str(s),
            ActorKey::Bytes(b) => {
                f.write_str("0x")?;
                for byte in b.iter() {
                    write!(f, "{byte:02x}")?;
                }
                Ok(())
            }
        }
    }
}

impl From<u64> for ActorKey {
    fn from(k: u64) -> Self {
        ActorKey::U64(k)
    }
}

impl From<&str> for ActorKey {
    fn from(k: &str) -> Self {
        ActorKey::Str(Arc::from(k))
    }
}

impl From<String> for ActorKey {
    fn from(k: String) -> Self {
        ActorKey::Str(Arc::from(k))
    }
}

impl From<&[u8]> for ActorKey {
    fn from(k: &[u8]) -> Self {
        ActorKey::Bytes(Arc::from(k))
    }
}

/// The identity of a virtual actor: its registered type name and its key.
///
/// The type name is the stable name an actor type is registered under (it is stored in logs and
/// sent over the wire), never a Rust type path that could change with a compiler version.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ActorId {
    /// Registered actor type name.
    pub type_name: &'static str,
    /// The actor's key within its type.
    pub key: ActorKey,
}

impl ActorId {
    /// An id from a type name and a key.
    pub fn new(type_name: &'static str, key: impl Into<ActorKey>) -> Self {
        ActorId {
            type_name,
            key: key.into(),
        }
    }

    /// This id's stable 64-bit hash (see [`stable_hash`]).
    pub fn stable_hash(&self) -> u64 {
        stable_hash(self)
    }
}

/// `type/key` with the key's unambiguous `Debug` form (`account/"ann"`).
impl fmt::Debug for ActorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{:?}", self.type_name, self.key)
    }
}

/// `type/key` with the key as written (`account/ann`).
impl fmt::Display for ActorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.type_name, self.key)
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// splitmix64's finaliser: spreads FNV's weak low bits over the whole word.
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The stable hash of an actor id, identical on every platform, process and version of Quark
/// that speaks the same protocol version.
///
/// Format hashed: `type_name bytes | 0xff | variant tag u8 | key bytes (u64 little-endian, or
/// the string/bytes)`, FNV-1a 64, then splitmix64's finaliser.
pub fn stable_hash(id: &ActorId) -> u64 {
    let mut h = fnv1a(FNV_OFFSET, id.type_name.as_bytes());
    h = fnv1a(h, &[0xff]);
    h = match &id.key {
        ActorKey::U64(k) => fnv1a(fnv1a(h, &[0]), &k.to_le_bytes()),
        ActorKey::Str(s) => fnv1a(fnv1a(h, &[1]), s.as_bytes()),
        ActorKey::Bytes(b) => fnv1a(fnv1a(h, &[2]), b),
    };
    mix64(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_pinned() {
        // These values are part of the placement contract: changing the hash moves every actor.
        let a = ActorId::new("counter", 7u64);
        let b = ActorId::new("counter", "7");
        assert_ne!(stable_hash(&a), stable_hash(&b));
        assert_eq!(stable_hash(&a), stable_hash(&ActorId::new("counter", 7u64)));
        assert_eq!(stable_hash(&a), 0x3ad8_e0a3_4d6e_46d4);
        assert_eq!(stable_hash(&b), 0x756e_e9f9_4026_600d);
    }

    #[test]
    fn display_names_type_and_key() {
        assert_eq!(ActorId::new("acct", 12u64).to_string(), "acct/12");
        assert_eq!(ActorId::new("acct", "bob").to_string(), "acct/bob");
        assert_eq!(ActorKey::from("c3").to_string(), "c3");
        assert_eq!(format!("{:?}", ActorKey::from("c3")), "\"c3\"");
        assert_eq!(format!("{:?}", ActorId::new("acct", "bob")), "acct/\"bob\"");
        assert_eq!(format!("{:?}", ActorId::new("acct", 12u64)), "acct/12");
        assert_eq!(
            ActorId::new("acct", &[1u8, 255][..]).to_string(),
            "acct/0x01ff"
        );
    }
}
