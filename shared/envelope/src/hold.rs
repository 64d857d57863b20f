//! Legal holds (decision 010): a held case's section keys, re-granted under a one-month hold key
//! before the epoch they belong to is destroyed, so that case alone stays readable.

use hru_domain::{AudienceId, EventId, EventType, FieldError, PartyId};
use hru_wire::v1 as pb;
use prost::Message as _;
use rand_core::{CryptoRng, RngCore};

use crate::primitives::{EPOCH_KEY_LEN, GrantSlot, held_section_aad, seal_epoch_key, section_key};
use crate::seal::{Draft, Step};
use crate::{AudiencePolicy, Directory, EpochState, SealError, SealedBatch, Sealer, VerifiedEnvelope};

/// The retention class of hold keys: a held grant opens for the month it is made and the next,
/// so a producer renews it monthly while the hold stands, and a released hold's keys die a
/// month after its last renewal.
pub const HOLD_CLASS: &str = "1m";

/// One section key of a producer's own event, as a legal hold keeps it.
#[derive(Clone, PartialEq, Eq)]
pub struct HeldKey {
    /// The event.
    pub event_id: EventId,
    /// The section name.
    pub name: String,
    /// HKDF(epoch key; event id ‖ name).
    pub key: [u8; EPOCH_KEY_LEN],
}

impl std::fmt::Debug for HeldKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldKey")
            .field("event_id", &self.event_id)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// What a held grant is for: the hold, its case, and the expired epoch whose sections it keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldEpoch<'a> {
    /// Hold id (the LegalHoldPlaced's, a UUID string).
    pub hold: &'a str,
    /// The held case (a UUID string).
    pub case: &'a str,
    /// The audience of the held sections.
    pub audience: &'a AudienceId,
    /// The epoch of the held sections.
    pub epoch: u32,
    /// The epoch's retention class.
    pub epoch_retention: &'a str,
    /// The epoch's month.
    pub epoch_month: &'a str,
    /// The parties the epoch was granted to (a hold keeps readable only what they were given).
    pub members: &'a [PartyId],
}

impl Sealer {
    /// The section keys of `env`'s sections under `audience`'s epoch `state`, when `env` is an
    /// event this producer sealed; none otherwise.
    pub fn held_keys(&self, audience: &AudienceId, state: &EpochState, env: &VerifiedEnvelope) -> Vec<HeldKey> {
        if env.header.producer != *self.producer() {
            return Vec::new();
        }
        env.sections
            .iter()
            .filter(|s| s.epoch == state.epoch && s.audience == audience.as_str())
            .map(|s| HeldKey {
                event_id: env.header.event_id,
                name: s.name.clone(),
                key: section_key(&state.key, &env.header.event_id, &s.name).into(),
            })
            .collect()
    }

    /// Seal a grant keeping `keys` readable for `held.members` through the month of `now_ms`
    /// and the month after: a fresh hold key sealed to each member's published key of
    /// [`HOLD_CLASS`] for that month, each section key wrapped under it. A member with no such
    /// key is left out, never sealed to its long-term key (a hold's copy must die with its
    /// month); those left out are the second value. Commit it once acknowledged.
    #[allow(clippy::too_many_arguments)]
    pub fn prepare_held(
        &self,
        held: &HeldEpoch<'_>,
        keys: &[HeldKey],
        directory: &Directory,
        now_ms: i64,
        policy: &dyn AudiencePolicy,
        rng: &mut (impl CryptoRng + RngCore),
    ) -> Result<(SealedBatch, Vec<PartyId>), SealError> {
        if keys.is_empty() {
            return Err(SealError::Field(FieldError::new(
                "sections",
                "a hold keeps at least one section",
            )));
        }
        let month = crate::month_at(now_ms)
            .ok_or_else(|| SealError::Field(FieldError::new("recorded_at_ms", format!("{now_ms} ms is no month"))))?;
        let mut hold_key = [0u8; EPOCH_KEY_LEN];
        rng.fill_bytes(&mut hold_key);
        let producer = self.producer().clone();
        let (with_key, left_out): (Vec<&PartyId>, Vec<&PartyId>) = held
            .members
            .iter()
            .partition(|p| directory.period_key(p, HOLD_CLASS, &month).is_some());
        if with_key.is_empty() {
            return Err(SealError::Field(FieldError::new(
                "members",
                format!("no member has published a {HOLD_CLASS} period key for {month}"),
            )));
        }
        let members = with_key
            .into_iter()
            .filter_map(|party| {
                let key = directory.period_key(party, HOLD_CLASS, &month)?;
                let slot = GrantSlot {
                    producer: &producer,
                    audience: held.audience,
                    epoch: held.epoch,
                    member: party,
                    member_key_id: &key.key_id,
                    hold: Some(held.hold),
                };
                let (enc, sealed) = seal_epoch_key(&hold_key, &slot, &key.key, rng);
                Some(pb::GrantMember {
                    party: party.to_string(),
                    key_id: key.key_id.0.to_vec(),
                    enc,
                    sealed_epoch_key: sealed,
                })
            })
            .collect();
        let sections = keys
            .iter()
            .map(|k| pb::HeldSectionKey {
                event_id: k.event_id.0.as_bytes().to_vec(),
                name: k.name.clone(),
                wrapped_key: crate::wrap_at_rest(
                    &hold_key,
                    &held_section_aad(&producer, held.audience, held.epoch, &k.event_id, &k.name),
                    &k.key,
                    rng,
                ),
            })
            .collect();
        let body = pb::KeyGranted {
            producer: producer.party.to_string(),
            audience: held.audience.to_string(),
            epoch: held.epoch,
            reason: pb::EpochReason::Unspecified as i32,
            month,
            members,
            retention: HOLD_CLASS.to_owned(),
            held: Some(pb::HeldSections {
                hold: held.hold.to_owned(),
                case_id: held.case.to_owned(),
                epoch_retention: held.epoch_retention.to_owned(),
                epoch_month: held.epoch_month.to_owned(),
                sections,
            }),
        };
        let draft = Draft::control(EventType::KeyGranted, now_ms, policy);
        let mut chain = self.chain();
        let sealed = self.finish(
            &mut chain,
            &draft,
            body.encode_to_vec(),
            |_, _| Vec::new(),
            Some(held.audience),
        );
        let batch = SealedBatch {
            envelopes: vec![sealed],
            steps: vec![Step {
                chain_after: chain,
                epoch: None,
            }],
        };
        Ok((batch, left_out.into_iter().cloned().collect()))
    }
}

/// Open the hold key of a held grant of `epoch` sealed to `member`'s key `key_id`, then every section
/// key it wraps; `None` when the hold key does not open or a section key does not
/// authenticate where the grant places it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn open_held(
    epoch: u32,
    held: &pb::HeldSections,
    producer: &hru_domain::ProducerId,
    audience: &AudienceId,
    mine: &pb::GrantMember,
    member: &PartyId,
    key_id: &hru_domain::KeyId,
    secret: &<crate::primitives::Kem as hpke::Kem>::PrivateKey,
) -> Option<Vec<HeldKey>> {
    let slot = GrantSlot {
        producer,
        audience,
        epoch,
        member,
        member_key_id: key_id,
        hold: Some(&held.hold),
    };
    let hold_key = crate::primitives::open_epoch_key(&mine.enc, &mine.sealed_epoch_key, &slot, secret)?;
    held.sections
        .iter()
        .map(|s| {
            let event_id = EventId(uuid::Uuid::from_slice(&s.event_id).ok()?);
            let aad = held_section_aad(producer, audience, epoch, &event_id, &s.name);
            let key = crate::unwrap_at_rest(&hold_key, &aad, &s.wrapped_key)?;
            Some(HeldKey {
                event_id,
                name: s.name.clone(),
                key,
            })
        })
        .collect()
}
