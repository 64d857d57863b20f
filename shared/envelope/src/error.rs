//! Typed errors of sealing and opening; each variant tells the caller what went wrong.

use hru_domain::{AudienceId, EventType, FieldError, KeyId, PartyId, ProducerId};

/// Why an envelope, a section or a key grant was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// The bytes do not decode, or a field is missing or out of range.
    #[error("malformed envelope: {0}")]
    Malformed(FieldError),
    /// The header names a signing key the directory does not have for that party.
    #[error("unknown signing key {key_id} for party {party}")]
    UnknownSigningKey {
        /// Party named in the header.
        party: String,
        /// Key id named in the header.
        key_id: KeyId,
    },
    /// The signing key exists but was not valid when the event was recorded.
    #[error("signing key {key_id} of {party} was not valid at {at_ms} ms")]
    KeyNotValid {
        /// Party.
        party: PartyId,
        /// Key id.
        key_id: KeyId,
        /// The header's recorded_at.
        at_ms: i64,
    },
    /// The signature does not verify (strictly) over the envelope's digest.
    #[error("bad signature from {producer}")]
    BadSignature {
        /// Producer named in the header.
        producer: ProducerId,
    },
    /// The reader is not a member of the section's audience.
    #[error("{party} is not in the audience {audience} of section {section}")]
    NotInAudience {
        /// Section name.
        section: String,
        /// Audience id.
        audience: AudienceId,
        /// The reader.
        party: PartyId,
    },
    /// The reader holds no epoch key for the section (no grant seen, or the key was destroyed).
    #[error("no epoch key for section {section}: producer {producer}, audience {audience}, epoch {epoch}")]
    MissingEpochKey {
        /// Section name.
        section: String,
        /// Producer party.
        producer: PartyId,
        /// Audience id.
        audience: AudienceId,
        /// Epoch.
        epoch: u32,
    },
    /// A section failed authenticated decryption: it was moved, swapped or altered.
    #[error("section {section} does not decrypt under its key and header")]
    SectionDecrypt {
        /// Section name.
        section: String,
    },
    /// The section's retention has passed and the reader's keys for it were destroyed.
    #[error("section {section} was erased under retention on {on} ({class} of {month})")]
    Erased {
        /// Section name.
        section: String,
        /// Retention class of its epoch.
        class: String,
        /// Month of its epoch.
        month: String,
        /// The day its retention ended (YYYY-MM-DD, UTC).
        on: String,
    },
    /// A key grant addressed to the reader could not be unsealed with the reader's key.
    #[error("key grant from {producer} for audience {audience} epoch {epoch} does not unseal for {party}")]
    GrantUnseal {
        /// Producer party.
        producer: PartyId,
        /// Audience id.
        audience: AudienceId,
        /// Epoch.
        epoch: u32,
        /// The reader.
        party: PartyId,
    },
    /// The envelope is not of the kind the call expects (e.g. a section event given as a grant).
    #[error("expected a {expected} envelope, got {found}")]
    WrongKind {
        /// What was expected.
        expected: &'static str,
        /// What was found.
        found: EventType,
    },
}

impl OpenError {
    /// A stable, short name of the error kind, for reports and matrices.
    pub fn kind(&self) -> &'static str {
        match self {
            OpenError::Malformed(_) => "malformed",
            OpenError::UnknownSigningKey { .. } => "unknown-signing-key",
            OpenError::KeyNotValid { .. } => "key-not-valid",
            OpenError::BadSignature { .. } => "bad-signature",
            OpenError::NotInAudience { .. } => "not-in-audience",
            OpenError::MissingEpochKey { .. } => "missing-epoch-key",
            OpenError::SectionDecrypt { .. } => "section-decrypt",
            OpenError::GrantUnseal { .. } => "grant-unseal",
            OpenError::Erased { .. } => "erased",
            OpenError::WrongKind { .. } => "wrong-kind",
        }
    }
}

impl From<FieldError> for OpenError {
    fn from(e: FieldError) -> Self {
        OpenError::Malformed(e)
    }
}

/// Why an event could not be sealed; nothing was sealed and the producer state is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The agreement in force shares this section with nobody (deny by default).
    #[error("no ISA rule shares {event_type}.{section} from {producer}: {reason}")]
    NoRule {
        /// Event type.
        event_type: EventType,
        /// Section.
        section: String,
        /// Producer party.
        producer: PartyId,
        /// The policy's reason.
        reason: String,
    },
    /// An audience member has no encryption key in the directory.
    #[error("party {party} has no encryption key in the directory; add its public key line from `hru keys generate`")]
    NoEncryptionKey {
        /// The party.
        party: PartyId,
    },
    /// A section name the event type does not have, or given twice.
    #[error("{0}")]
    Field(FieldError),
}
