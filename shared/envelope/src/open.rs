//! The reader side: verify an envelope with the directory alone, then open the sections the
//! reader's key ring holds epoch keys for.

use std::collections::{BTreeSet, HashMap};

use hru_domain::{AudienceId, Digest, EventHeader, EventType, FieldError, KeyId, PartyId, ProducerId};
use hru_wire::v1 as pb;
use prost::Message;

use crate::primitives::{GrantSlot, NONCE_LEN, envelope_digest, header_digest, open_epoch_key, open_section};
use crate::{Audience, Directory, EpochKey, OpenError, PartySecrets};

/// An envelope whose encoding, header and signature have been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedEnvelope {
    /// The validated header.
    pub header: EventHeader,
    /// Digest of the header bytes (bound into section AAD).
    pub header_digest: Digest,
    /// The signed envelope digest (the chain link).
    pub digest: Digest,
    /// The signed cleartext body (public events).
    pub body: Vec<u8>,
    /// The encrypted sections.
    pub sections: Vec<pb::Section>,
}

/// Decode `bytes` strictly, protobuf-canonical, so each envelope has exactly one encoding.
fn decode_canonical<M: Message + Default>(bytes: &[u8], field: &str) -> Result<M, OpenError> {
    let m = M::decode(bytes).map_err(|e| FieldError::new(field, format!("does not decode: {e}")))?;
    if m.encoded_len() != bytes.len() || m.encode_to_vec() != bytes {
        return Err(FieldError::new(
            field,
            "is not canonically encoded (unknown, repeated or reordered fields)",
        )
        .into());
    }
    Ok(m)
}

/// Decode an envelope's header without verifying it (for a producer's own outbox, whose
/// envelopes it sealed itself).
pub fn decode_header(bytes: &[u8]) -> Result<EventHeader, OpenError> {
    let envelope: pb::Envelope = decode_canonical(bytes, "envelope")?;
    let wire: pb::EventHeader = decode_canonical(&envelope.header, "header")?;
    Ok(EventHeader::try_from(wire).map_err(|e| e.within("header"))?)
}

/// Verify an envelope with the public directory alone: strict decoding, a valid header, the
/// section layout its type allows, and a strict ed25519 signature by a key valid at the time.
pub fn verify(bytes: &[u8], directory: &Directory) -> Result<VerifiedEnvelope, OpenError> {
    let pb::Envelope {
        header,
        body,
        sections,
        signature,
    } = decode_canonical(bytes, "envelope")?;
    let wire_header: pb::EventHeader = decode_canonical(&header, "header")?;
    let parsed = EventHeader::try_from(wire_header).map_err(|e| e.within("header"))?;
    check_layout(&parsed, &body, &sections)?;
    let signature: [u8; 64] = signature
        .as_slice()
        .try_into()
        .map_err(|_| FieldError::new("signature", format!("must be 64 bytes, got {}", signature.len())))?;
    let party = &parsed.producer.party;
    let entry = directory
        .party(party)
        .and_then(|p| p.signing.iter().find(|k| k.key_id == parsed.key_id))
        .ok_or_else(|| OpenError::UnknownSigningKey {
            party: party.to_string(),
            key_id: parsed.key_id,
        })?;
    if !entry.valid_at(parsed.recorded_at_ms) {
        return Err(OpenError::KeyNotValid {
            party: party.clone(),
            key_id: parsed.key_id,
            at_ms: parsed.recorded_at_ms,
        });
    }
    let digest = envelope_digest(&header, &body, &sections);
    if !crate::primitives::verify_strict(&entry.key, &digest.0, &signature) {
        return Err(OpenError::BadSignature {
            producer: parsed.producer.clone(),
        });
    }
    Ok(VerifiedEnvelope {
        header_digest: header_digest(&header),
        header: parsed,
        digest,
        body,
        sections,
    })
}

fn check_layout(header: &EventHeader, body: &[u8], sections: &[pb::Section]) -> Result<(), OpenError> {
    let t = header.event_type;
    if t.is_public() {
        if body.is_empty() {
            return Err(FieldError::new("body", format!("is required for {t}")).into());
        }
        if !sections.is_empty() {
            return Err(FieldError::new("sections", format!("must be empty for {t}")).into());
        }
        return Ok(());
    }
    if !body.is_empty() {
        return Err(FieldError::new("body", format!("must be empty for {t}")).into());
    }
    if sections.is_empty() {
        return Err(FieldError::new("sections", format!("{t} needs at least one")).into());
    }
    let mut seen = BTreeSet::new();
    for (i, s) in sections.iter().enumerate() {
        let at = |m: String| OpenError::Malformed(FieldError::new(format!("sections[{i}]"), m));
        if !t.sections().contains(&s.name.as_str()) {
            return Err(at(format!("names {:?}, which {t} does not have", s.name)));
        }
        if !seen.insert(s.name.as_str()) {
            return Err(at(format!("repeats section {:?}", s.name)));
        }
        AudienceId::parse(&s.audience, "audience").map_err(|e| at(e.to_string()))?;
        if s.epoch == 0 {
            return Err(at("has epoch 0; epochs start at 1".into()));
        }
        if s.nonce.len() != NONCE_LEN {
            return Err(at(format!("nonce must be {NONCE_LEN} bytes, got {}", s.nonce.len())));
        }
        if s.ciphertext.len() < 16 {
            return Err(at("ciphertext is shorter than its tag".into()));
        }
    }
    Ok(())
}

/// One section as a reader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenedSection {
    /// Section name.
    pub name: String,
    /// The encoded section message, or why the reader cannot have it.
    pub plaintext: Result<Vec<u8>, OpenError>,
}

/// An event as a reader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenedEvent {
    /// The verified header.
    pub header: EventHeader,
    /// Every section, opened or refused.
    pub sections: Vec<OpenedSection>,
}

type EpochRef = (ProducerId, AudienceId, u32);

/// A reader's keys: its own secrets and every epoch key granted to it.
pub struct KeyRing {
    party: PartyId,
    /// The party's X25519 secrets by key id: the current one first, then any it rotated out
    /// (grants made before a rotation are sealed to the old key).
    secrets: Vec<(KeyId, <crate::primitives::Kem as hpke::Kem>::PrivateKey)>,
    epoch_keys: HashMap<EpochRef, EpochKey>,
    members: HashMap<(ProducerId, AudienceId), BTreeSet<PartyId>>,
    known: HashMap<AudienceId, bool>,
}

/// What a grant meant for this reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantOutcome {
    /// The reader is a member and now holds the epoch key.
    Opened,
    /// The reader is not a member; the audience's membership is recorded.
    NotAMember,
}

impl KeyRing {
    /// A key ring for the party these secrets belong to.
    pub fn new(secrets: &PartySecrets) -> Self {
        Self {
            party: secrets.party.clone(),
            secrets: vec![(secrets.encryption_key_id(), secrets.encryption.clone())],
            epoch_keys: HashMap::new(),
            members: HashMap::new(),
            known: HashMap::new(),
        }
    }

    /// Also open grants sealed to an earlier X25519 key of the same party (kept when the key
    /// was rotated); secrets of another party are ignored.
    pub fn with_past(mut self, past: &PartySecrets) -> Self {
        let id = past.encryption_key_id();
        if past.party == self.party && !self.secrets.iter().any(|(k, _)| *k == id) {
            self.secrets.push((id, past.encryption.clone()));
        }
        self
    }

    /// The reader.
    pub fn party(&self) -> &PartyId {
        &self.party
    }

    /// The members of `producer`'s `audience`, as a grant the reader took in named them.
    pub fn audience_members(&self, producer: &ProducerId, audience: &AudienceId) -> Option<&BTreeSet<PartyId>> {
        self.members.get(&(producer.clone(), audience.clone()))
    }

    /// Number of epoch keys held.
    pub fn epoch_keys(&self) -> usize {
        self.epoch_keys.len()
    }

    /// Learn an audience from the agreement (its id is derived from its members), so a section
    /// for an audience whose grant the reader never sees is still reported as not for it.
    pub fn know_audience(&mut self, audience: &Audience) {
        self.known.insert(audience.id().clone(), audience.contains(&self.party));
    }

    /// Take in a verified KeyGranted envelope: record its audience and, if the reader is a
    /// member, unseal its epoch key.
    pub fn ingest_grant(&mut self, env: &VerifiedEnvelope) -> Result<GrantOutcome, OpenError> {
        if env.header.event_type != EventType::KeyGranted {
            return Err(OpenError::WrongKind {
                expected: "KeyGranted",
                found: env.header.event_type,
            });
        }
        let grant: pb::KeyGranted = decode_canonical(&env.body, "body")?;
        let pb::KeyGranted {
            producer,
            audience,
            epoch,
            reason: _,
            month: _,
            retention: _,
            members,
        } = grant;
        let producer_party = &env.header.producer.party;
        if producer != producer_party.as_str() {
            return Err(FieldError::new(
                "body.producer",
                format!("{producer:?} is not the signer {producer_party}"),
            )
            .into());
        }
        let audience = AudienceId::parse(&audience, "body.audience")?;
        if epoch == 0 {
            return Err(FieldError::new("body.epoch", "epochs start at 1").into());
        }
        let parties = members
            .iter()
            .enumerate()
            .map(|(i, m)| PartyId::parse(&m.party, &format!("body.members[{i}].party")))
            .collect::<Result<Vec<_>, _>>()?;
        let set = Audience::new(parties.iter().cloned())
            .ok_or_else(|| FieldError::new("body.members", "must name at least one member"))?;
        if *set.id() != audience || set.members().len() != parties.len() {
            return Err(
                FieldError::new("body.audience", format!("{audience} is not the id of its member list")).into(),
            );
        }
        self.members
            .insert((env.header.producer.clone(), audience.clone()), set.members().clone());
        let Some(mine) = members
            .iter()
            .zip(&parties)
            .find(|(_, p)| **p == self.party)
            .map(|(m, _)| m)
        else {
            return Ok(GrantOutcome::NotAMember);
        };
        let unseal_error = || OpenError::GrantUnseal {
            producer: producer_party.clone(),
            audience: audience.clone(),
            epoch,
            party: self.party.clone(),
        };
        let Some((key_id, secret)) = self
            .secrets
            .iter()
            .find(|(k, _)| k.0.as_slice() == mine.key_id.as_slice())
        else {
            return Err(unseal_error());
        };
        let slot = GrantSlot {
            producer: &env.header.producer,
            audience: &audience,
            epoch,
            member: &self.party,
            member_key_id: key_id,
        };
        let key = open_epoch_key(&mine.enc, &mine.sealed_epoch_key, &slot, secret).ok_or_else(unseal_error)?;
        self.epoch_keys
            .insert((env.header.producer.clone(), audience, epoch), EpochKey::new(key));
        Ok(GrantOutcome::Opened)
    }

    /// Open every section of a verified event that the reader holds a key for.
    pub fn open(&self, env: &VerifiedEnvelope) -> OpenedEvent {
        let producer = &env.header.producer;
        let sections = env
            .sections
            .iter()
            .map(|s| {
                let audience = AudienceId::parse(&s.audience, "audience")
                    .unwrap_or_else(|_| unreachable!("verify checked every section's audience"));
                let plaintext = match self.epoch_keys.get(&(producer.clone(), audience.clone(), s.epoch)) {
                    Some(key) => open_section(key, &env.header.event_id, &env.header_digest, s).ok_or_else(|| {
                        OpenError::SectionDecrypt {
                            section: s.name.clone(),
                        }
                    }),
                    None => match self.members.get(&(producer.clone(), audience.clone())) {
                        Some(members) if !members.contains(&self.party) => Err(OpenError::NotInAudience {
                            section: s.name.clone(),
                            audience,
                            party: self.party.clone(),
                        }),
                        None if self.known.get(&audience) == Some(&false) => Err(OpenError::NotInAudience {
                            section: s.name.clone(),
                            audience,
                            party: self.party.clone(),
                        }),
                        _ => Err(OpenError::MissingEpochKey {
                            section: s.name.clone(),
                            producer: producer.party.clone(),
                            audience,
                            epoch: s.epoch,
                        }),
                    },
                };
                OpenedSection {
                    name: s.name.clone(),
                    plaintext,
                }
            })
            .collect();
        OpenedEvent {
            header: env.header.clone(),
            sections,
        }
    }
}
