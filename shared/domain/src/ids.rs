//! Identifiers: cases, events, parties, keys, audiences and digests.

use std::fmt;
use std::str::FromStr;

use crate::FieldError;

/// A case: a random 128-bit id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CaseId(pub uuid::Uuid);

/// An event: a UUIDv7, also the broker's `Nats-Msg-Id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(pub uuid::Uuid);

/// A key id: the first 8 bytes of SHA-256 of a public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 8]);

/// A 32-byte SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

/// A party: a unit that holds keys and appears in an ISA, e.g. `police-hru`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartyId(String);

/// A GPS tag fitted to a monitored person, e.g. `tag-17`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TagId(String);

/// A victim's paired alert device, e.g. `vd-3`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(String);

/// An audience: the id of an exact, sorted set of parties.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AudienceId(String);

impl CaseId {
    /// A fresh random case id.
    pub fn random() -> Self {
        Self(uuid::Uuid::new_v4())
    }

    /// Parse from the 16 raw bytes of the wire; `field` names it in the error.
    pub fn from_wire(bytes: &[u8], field: &str) -> Result<Self, FieldError> {
        uuid16(bytes, field).map(Self)
    }

    /// The subject token form: 32 lowercase hex digits.
    pub fn token(&self) -> String {
        self.0.simple().to_string()
    }
}

impl EventId {
    /// A fresh UUIDv7 (time-ordered).
    pub fn new_v7() -> Self {
        Self(uuid::Uuid::now_v7())
    }

    /// A UUIDv7 at `at_ms` whose other bits derive from `key`: the same key and time always give
    /// the same id.
    pub fn derived_v7(at_ms: i64, key: &[u8]) -> Self {
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(key);
        let mut random = [0u8; 10];
        random.copy_from_slice(&digest[..10]);
        Self(uuid::Builder::from_unix_timestamp_millis(u64::try_from(at_ms).unwrap_or(0), &random).into_uuid())
    }

    /// Parse from the 16 raw bytes of the wire; `field` names it in the error.
    pub fn from_wire(bytes: &[u8], field: &str) -> Result<Self, FieldError> {
        let id = uuid16(bytes, field)?;
        if id.get_version_num() != 7 {
            return Err(FieldError::new(field, "must be a UUIDv7"));
        }
        Ok(Self(id))
    }
}

fn uuid16(bytes: &[u8], field: &str) -> Result<uuid::Uuid, FieldError> {
    let raw: [u8; 16] = bytes
        .try_into()
        .map_err(|_| FieldError::new(field, format!("must be 16 bytes, got {}", bytes.len())))?;
    Ok(uuid::Uuid::from_bytes(raw))
}

impl fmt::Display for CaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for CaseId {
    type Err = FieldError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::parse_str(s)
            .map(Self)
            .map_err(|e| FieldError::new("case_id", format!("is not a UUID ({e})")))
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl KeyId {
    /// Parse from the 8 raw bytes of the wire; `field` names it in the error.
    pub fn from_wire(bytes: &[u8], field: &str) -> Result<Self, FieldError> {
        bytes
            .try_into()
            .map(Self)
            .map_err(|_| FieldError::new(field, format!("must be 8 bytes, got {}", bytes.len())))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl Digest {
    /// The all-zero digest that a producer's first envelope names as its predecessor.
    pub const ZERO: Digest = Digest([0; 32]);

    /// Parse from the 32 raw bytes of the wire; `field` names it in the error.
    pub fn from_wire(bytes: &[u8], field: &str) -> Result<Self, FieldError> {
        bytes
            .try_into()
            .map(Self)
            .map_err(|_| FieldError::new(field, format!("must be 32 bytes, got {}", bytes.len())))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", hex::encode(&self.0[..8]))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// Longest party, instance or audience token accepted.
const MAX_TOKEN: usize = 48;

/// Check that `s` is a safe subject token: 1..=48 of `[a-z0-9-]`, not starting or ending in `-`.
pub(crate) fn check_token(s: &str, field: &str) -> Result<(), FieldError> {
    let ok_chars = s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if s.is_empty() || s.len() > MAX_TOKEN || !ok_chars || s.starts_with('-') || s.ends_with('-') {
        return Err(FieldError::new(
            field,
            format!("must be 1-{MAX_TOKEN} characters of a-z, 0-9 and inner '-', got {s:?}"),
        ));
    }
    Ok(())
}

impl PartyId {
    /// Parse a party id; `field` names it in the error.
    pub fn parse(s: &str, field: &str) -> Result<Self, FieldError> {
        check_token(s, field)?;
        Ok(Self(s.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for PartyId {
    type Err = FieldError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s, "party")
    }
}

impl fmt::Display for PartyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AudienceId {
    /// Parse an audience id; `field` names it in the error.
    pub fn parse(s: &str, field: &str) -> Result<Self, FieldError> {
        check_token(s, field)?;
        Ok(Self(s.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AudienceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

macro_rules! token_id {
    ($t:ident, $default_field:literal) => {
        impl $t {
            /// Parse the id; `field` names it in the error.
            pub fn parse(s: &str, field: &str) -> Result<Self, FieldError> {
                check_token(s, field)?;
                Ok(Self(s.to_owned()))
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $t {
            type Err = FieldError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s, $default_field)
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<$t> for String {
            fn from(id: $t) -> String {
                id.0
            }
        }

        impl std::borrow::Borrow<str> for $t {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}

token_id!(TagId, "tag_id");
token_id!(DeviceId, "device_id");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_and_device_ids_are_tokens() {
        assert!(TagId::parse("tag-17", "tag_id").is_ok());
        assert!(DeviceId::parse("Victim Phone", "device_id").is_err());
    }

    #[test]
    fn derived_event_ids_are_uuid_v7_and_stable() {
        let a = EventId::derived_v7(1_800_000_000_000, b"breach-1-OPENED");
        assert_eq!(a.0.get_version_num(), 7);
        assert_eq!(a, EventId::derived_v7(1_800_000_000_000, b"breach-1-OPENED"));
        assert_ne!(a, EventId::derived_v7(1_800_000_000_000, b"breach-1-CLOSED"));
        assert!(EventId::from_wire(a.0.as_bytes(), "id").is_ok());
    }
}
