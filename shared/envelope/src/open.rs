//! The reader side: verify an envelope with the directory alone, then open the sections the
//! reader's key ring holds epoch keys for.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use hru_domain::{AudienceId, Digest, EventHeader, EventId, EventType, FieldError, KeyId, PartyId, ProducerId};
use hru_wire::v1 as pb;
use prost::Message;

use crate::primitives::{
    GrantSlot, NONCE_LEN, envelope_digest, header_digest, open_epoch_key, open_section, open_section_with,
};
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
    /// The legal hold it was opened under, when its epoch's retention has passed.
    pub held: Option<String>,
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

/// A section key kept under a legal hold, and the hold key's period it dies with.
struct HeldSection {
    key: chacha20poly1305::Key,
    hold: String,
    case: hru_domain::CaseId,
    month: String,
}

/// A reader's keys: its own secrets and every epoch key granted to it.
pub struct KeyRing {
    party: PartyId,
    /// The party's X25519 secrets by key id: the current one first, then any it rotated out
    /// (grants made before a rotation are sealed to the old key).
    secrets: Vec<(KeyId, <crate::primitives::Kem as hpke::Kem>::PrivateKey)>,
    epoch_keys: HashMap<EpochRef, EpochKey>,
    /// The retention class and month of each epoch taken in (opened or erased).
    epoch_periods: HashMap<EpochRef, (String, String)>,
    /// Epochs whose retention passed and whose keys this ring destroyed or never could open.
    erased: HashMap<EpochRef, (String, String)>,
    /// The party's period secrets still derivable, by key id, with their (class, month).
    periods: HashMap<KeyId, (String, String, <crate::primitives::Kem as hpke::Kem>::PrivateKey)>,
    /// Per class, the first month the party's period chain can still derive.
    period_starts: HashMap<String, String>,
    /// Epochs whose retention ended by this time (Unix ms) are erased: destroyed if held, and
    /// never opened again, whichever key their grant is sealed to.
    expired_at: i64,
    members: HashMap<(ProducerId, AudienceId), BTreeSet<PartyId>>,
    known: HashMap<AudienceId, bool>,
    /// Section keys kept under legal holds, by epoch, event and section name.
    held: HashMap<(EpochRef, EventId, String), HeldSection>,
}

/// When sections of an epoch of (`class`, `month`) expire (Unix ms), if the class is one.
fn expires(class: &str, month: &str) -> Option<i64> {
    hru_domain::Retention::parse(class).and_then(|r| r.expires(month))
}

/// The day (UTC) sections of (`class`, `month`) became erasable.
fn erased_on(class: &str, month: &str) -> String {
    hru_domain::Retention::parse(class)
        .and_then(|r| r.expires(month))
        .and_then(|t| jiff::Timestamp::from_millisecond(t).ok())
        .map_or_else(|| "an unknown date".to_owned(), |t| t.strftime("%Y-%m-%d").to_string())
}

/// What a grant meant for this reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantOutcome {
    /// The reader is a member and now holds the epoch key.
    Opened,
    /// The reader is not a member; the audience's membership is recorded.
    NotAMember,
    /// The reader is a member, but the period key the grant is sealed to was destroyed when
    /// its retention ended: the epoch's sections open as erased.
    Erased,
    /// The grant keeps a legal hold's sections and gave the reader section keys it did not
    /// hold (what it folded before may now open more).
    Held,
    /// The grant keeps a legal hold's sections whose keys the reader already held (a monthly
    /// renewal, or a grant taken in ahead of the events).
    HeldKnown,
}

impl KeyRing {
    /// A key ring for the party these secrets belong to.
    pub fn new(secrets: &PartySecrets) -> Self {
        Self {
            party: secrets.party.clone(),
            secrets: vec![(secrets.encryption_key_id(), secrets.encryption.clone())],
            epoch_keys: HashMap::new(),
            epoch_periods: HashMap::new(),
            erased: HashMap::new(),
            periods: HashMap::new(),
            period_starts: HashMap::new(),
            expired_at: i64::MIN,
            members: HashMap::new(),
            known: HashMap::new(),
            held: HashMap::new(),
        }
    }

    /// Also open grants sealed to the party's period keys (decision 010): every month each
    /// chain can still derive, through `through` ("YYYY-MM"). Chains of another party are
    /// ignored.
    pub fn with_periods(mut self, periods: &crate::PeriodKeys, through: &str) -> Self {
        self.set_periods(periods, through);
        self
    }

    /// Replace the period secrets with what `periods` derives through `through` (after the
    /// holder's chains moved on, or a new month came).
    pub fn set_periods(&mut self, periods: &crate::PeriodKeys, through: &str) {
        if *periods.party() != self.party {
            return;
        }
        self.period_starts = periods
            .first_months()
            .map(|(c, m)| (c.to_owned(), m.to_owned()))
            .collect();
        let mut derived = HashMap::new();
        for (class, first) in periods.first_months() {
            let mut month = first.to_owned();
            while month.as_str() <= through {
                if let Some((id, sk)) = periods.secret(class, &month) {
                    derived.insert(id, (class.to_owned(), month.clone(), sk));
                }
                match crate::period::next_month(&month) {
                    Some(n) => month = n,
                    None => break,
                }
            }
        }
        self.periods = derived;
    }

    /// Destroy every epoch key and period secret whose retention ended by `at_ms`; the epochs
    /// destroyed (their sections now open as erased).
    pub fn destroy_expired(&mut self, at_ms: i64) -> Vec<(ProducerId, AudienceId, u32, String, String)> {
        self.expired_at = self.expired_at.max(at_ms);
        let expired = |class: &str, month: &str| expires(class, month).is_some_and(|t| t <= at_ms);
        self.periods.retain(|_, (class, month, _)| !expired(class, month));
        self.held.retain(|_, h| !expired(crate::HOLD_CLASS, &h.month));
        let gone: Vec<EpochRef> = self
            .epoch_keys
            .keys()
            .filter(|e| self.epoch_periods.get(*e).is_some_and(|(c, m)| expired(c, m)))
            .cloned()
            .collect();
        let mut out = Vec::new();
        for e in gone {
            self.epoch_keys.remove(&e);
            let (class, month) = self.epoch_periods.get(&e).cloned().unwrap_or_default();
            self.erased.insert(e.clone(), (class.clone(), month.clone()));
            out.push((e.0, e.1, e.2, class, month));
        }
        out
    }

    /// Whether an epoch the ring took in (opened or erased) has its retention end after
    /// `after_ms` and by `through_ms`: what was derived from it must now be forgotten.
    pub fn expiring_between(&self, after_ms: i64, through_ms: i64) -> bool {
        let between = |c: &str, m: &str| expires(c, m).is_some_and(|t| t > after_ms && t <= through_ms);
        self.epoch_periods.values().any(|(c, m)| between(c, m))
            || self.held.values().any(|h| between(crate::HOLD_CLASS, &h.month))
    }

    /// The legal holds whose section keys this ring holds, with how many sections each keeps.
    pub fn holds(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for h in self.held.values() {
            *out.entry(h.hold.clone()).or_default() += 1;
        }
        out
    }

    /// The (class, month) of every epoch whose key this ring holds.
    pub fn held_epochs(&self) -> impl Iterator<Item = (&EpochRef, &(String, String))> {
        self.epoch_keys
            .keys()
            .filter_map(|e| self.epoch_periods.get(e).map(|p| (e, p)))
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
            month,
            retention,
            members,
            held,
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
        let epoch_ref = (env.header.producer.clone(), audience.clone(), epoch);
        if let Some(held) = held {
            return self.ingest_held(env, &held, &epoch_ref, mine, &month, &retention);
        }
        let period = (retention.clone(), month.clone());
        // Past its retention (as of the ring's last sweep) nothing is opened, even where the
        // grant is sealed to a key that still exists.
        if expires(&retention, &month).is_some_and(|t| t <= self.expired_at) {
            self.epoch_periods.insert(epoch_ref.clone(), period.clone());
            self.epoch_keys.remove(&epoch_ref);
            self.erased.insert(epoch_ref, period);
            return Ok(GrantOutcome::Erased);
        }
        let Some((key_id, secret)) = self.secret_for(&mine.key_id) else {
            // A grant to a period key whose month the party's chain has moved past: its
            // retention ended and the key was destroyed, not a fault.
            let destroyed = self.period_starts.get(&retention).is_some_and(|first| month < *first);
            if destroyed {
                self.epoch_periods.insert(epoch_ref.clone(), period.clone());
                self.erased.insert(epoch_ref, period);
                return Ok(GrantOutcome::Erased);
            }
            return Err(unseal_error());
        };
        let slot = GrantSlot {
            producer: &env.header.producer,
            audience: &audience,
            epoch,
            member: &self.party,
            member_key_id: key_id,
            hold: None,
        };
        let key = open_epoch_key(&mine.enc, &mine.sealed_epoch_key, &slot, secret).ok_or_else(unseal_error)?;
        self.epoch_periods.insert(epoch_ref.clone(), period);
        self.epoch_keys.insert(epoch_ref, EpochKey::new(key));
        Ok(GrantOutcome::Opened)
    }

    /// The reader's secret whose key id is `key_id`: a long-term key or a period key.
    fn secret_for(&self, key_id: &[u8]) -> Option<(&KeyId, &<crate::primitives::Kem as hpke::Kem>::PrivateKey)> {
        self.secrets
            .iter()
            .find(|(k, _)| k.0.as_slice() == key_id)
            .map(|(k, s)| (k, s))
            .or_else(|| {
                self.periods
                    .iter()
                    .find(|(k, _)| k.0.as_slice() == key_id)
                    .map(|(k, (_, _, s))| (k, s))
            })
    }

    /// Take in a legal hold's grant addressed to the reader: its section keys, until the hold
    /// key's period ends.
    fn ingest_held(
        &mut self,
        env: &VerifiedEnvelope,
        held: &pb::HeldSections,
        epoch_ref: &EpochRef,
        mine: &pb::GrantMember,
        month: &str,
        retention: &str,
    ) -> Result<GrantOutcome, OpenError> {
        if retention != crate::HOLD_CLASS {
            return Err(FieldError::new(
                "body.retention",
                format!("a hold's grant is of class {}, not {retention:?}", crate::HOLD_CLASS),
            )
            .into());
        }
        // A hold's key is for the month it was granted in, no later: it dies with that month.
        if crate::month_at(env.header.recorded_at_ms).as_deref() != Some(month) {
            return Err(FieldError::new(
                "body.month",
                format!("a hold's grant is for the month it is recorded in, not {month:?}"),
            )
            .into());
        }
        let case: hru_domain::CaseId = held
            .case_id
            .parse()
            .map_err(|e: FieldError| FieldError::new("body.held.case_id", e.problem))?;
        if expires(retention, month).is_some_and(|t| t <= self.expired_at) {
            return Ok(GrantOutcome::Erased);
        }
        let unseal_error = || OpenError::GrantUnseal {
            producer: env.header.producer.party.clone(),
            audience: epoch_ref.1.clone(),
            epoch: epoch_ref.2,
            party: self.party.clone(),
        };
        let Some((key_id, secret)) = self.secret_for(&mine.key_id) else {
            let destroyed = self
                .period_starts
                .get(retention)
                .is_some_and(|first| month < first.as_str());
            return if destroyed {
                Ok(GrantOutcome::Erased)
            } else {
                Err(unseal_error())
            };
        };
        let keys = crate::hold::open_held(
            epoch_ref.2,
            held,
            &env.header.producer,
            &epoch_ref.1,
            mine,
            &self.party,
            key_id,
            secret,
        )
        .ok_or_else(unseal_error)?;
        let mut added = false;
        for k in keys {
            let at = (epoch_ref.clone(), k.event_id, k.name);
            added |= !self.held.contains_key(&at);
            let newer = self.held.get(&at).is_none_or(|h| h.month.as_str() <= month);
            if newer {
                self.held.insert(
                    at,
                    HeldSection {
                        key: k.key.into(),
                        hold: held.hold.clone(),
                        case,
                        month: month.to_owned(),
                    },
                );
            }
        }
        Ok(if added {
            GrantOutcome::Held
        } else {
            GrantOutcome::HeldKnown
        })
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
                let at = (producer.clone(), audience.clone(), s.epoch);
                let plaintext = if let Some(key) = self.epoch_keys.get(&at) {
                    open_section(key, &env.header.event_id, &env.header_digest, s).ok_or_else(|| {
                        OpenError::SectionDecrypt {
                            section: s.name.clone(),
                        }
                    })
                } else if let Some(h) = self
                    .held
                    .get(&(at.clone(), env.header.event_id, s.name.clone()))
                    // A legal hold's key, only in the held case: it never opens another's event.
                    .filter(|h| env.header.case_id == Some(h.case))
                {
                    return OpenedSection {
                        name: s.name.clone(),
                        plaintext: open_section_with(&h.key, &env.header_digest, s).ok_or_else(|| {
                            OpenError::SectionDecrypt {
                                section: s.name.clone(),
                            }
                        }),
                        held: Some(h.hold.clone()),
                    };
                } else if let Some((class, month)) = self.erased.get(&at) {
                    Err(OpenError::Erased {
                        section: s.name.clone(),
                        class: class.clone(),
                        month: month.clone(),
                        on: erased_on(class, month),
                    })
                } else {
                    match self.members.get(&(producer.clone(), audience.clone())) {
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
                    }
                };
                OpenedSection {
                    name: s.name.clone(),
                    plaintext,
                    held: None,
                }
            })
            .collect();
        OpenedEvent {
            header: env.header.clone(),
            sections,
        }
    }
}
