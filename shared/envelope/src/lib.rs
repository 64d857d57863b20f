//! Seal and open events (DESIGN §6): ed25519 signatures over the exact bytes that travel,
//! XChaCha20-Poly1305 sections under per-(producer, audience, epoch) keys granted to each
//! member with HPKE, the gap-free producer chain, and a key ring that opens what a reader may.
//!
//! Everything here is pure computation over bytes and keys: no I/O, no clock reads, no async.

mod audience;
mod chain;
mod detached;
mod error;
mod hold;
mod keys;
mod linkage;
mod open;
mod period;
mod primitives;
mod seal;
mod static_policy;

/// Deterministic keys and casts for tests, benchmarks and fuzzing; compiled only with the
/// `fixture` feature, which no product crate enables.
#[cfg(feature = "fixture")]
pub mod fixture;

pub use audience::Audience;
pub use chain::{ChainBreak, ChainChecker};
pub use detached::{Detached, DetachedError, sign_detached, verify_detached};
pub use error::{OpenError, SealError};
pub use hold::{HOLD_CLASS, HeldEpoch, HeldKey};
pub use hru_domain::PlainSection;
pub use keys::{
    DeviceSecret, Directory, DirectoryError, EncryptionKey, PartyEntry, PartySecrets, SigningKeyEntry,
    create_private_dir, key_id,
};
pub use linkage::{LinkageKey, identifier as subject_identifier};
pub use open::{GrantOutcome, KeyRing, OpenedEvent, OpenedSection, VerifiedEnvelope, decode_header, verify};
pub use period::{PUBLISH_MONTHS, PeriodKeys, PeriodPublic, PeriodsDestroyed, month_at, next_month, published_through};
pub use primitives::{EpochKey, SIGNATURE_DOMAIN, public_key, unwrap_at_rest, verify_strict, wrap_at_rest};
pub use seal::{AudiencePolicy, ChainHead, EpochSlot, EpochState, Refusal, SealedBatch, SealedEnvelope, Sealer};
pub use static_policy::StaticAudiences;

/// Section schema version this build writes.
pub const SCHEMA_VERSION: u32 = 1;
