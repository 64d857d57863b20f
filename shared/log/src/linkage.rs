//! The subject-linkage key on the log (decision 020): the custodian's signed
//! `LinkageKeyGranted` events, read and verified; a holder opens its copy of the newest.

use std::collections::BTreeSet;

use futures::TryStreamExt as _;
use hru_broker::Filter;
use hru_domain::{EventType, PartyId};
use hru_envelope::{Directory, LinkageKey, PartySecrets};
use hru_wire::v1 as pb;
use prost::Message as _;

use crate::LogError;
use crate::read::Reader;

/// One verified grant of the linkage key.
#[derive(Debug, Clone)]
pub struct LinkageGrant {
    /// Its log sequence.
    pub sequence: u64,
    /// When it was recorded, Unix ms.
    pub recorded_at_ms: i64,
    /// What it says.
    pub body: pb::LinkageKeyGranted,
}

/// Every grant of `agreement`'s linkage key the log holds, in log order, each verified as signed
/// by `custodian`; anything else under that event type is skipped and logged.
pub async fn grants(
    reader: &Reader,
    directory: &Directory,
    agreement: &str,
    custodian: &PartyId,
) -> Result<Vec<LinkageGrant>, LogError> {
    let entries: Vec<_> = reader
        .replay(1, &[Filter::control_of_type(EventType::LinkageKeyGranted)])
        .await?
        .try_collect()
        .await?;
    let mut out = Vec::new();
    for e in entries {
        let verified = match hru_envelope::verify(&e.payload, directory) {
            Ok(v) => v,
            Err(err) => {
                tracing::warn!(sequence = e.sequence, cause = %err, "a linkage grant that does not verify is not taken");
                continue;
            }
        };
        if verified.header.event_type != EventType::LinkageKeyGranted || verified.header.producer.party != *custodian {
            tracing::warn!(sequence = e.sequence, producer = %verified.header.producer.party, "a linkage grant not signed by the custodian is not taken");
            continue;
        }
        match pb::LinkageKeyGranted::decode(verified.body.as_slice()) {
            Ok(body) if body.agreement == agreement => out.push(LinkageGrant {
                sequence: e.sequence,
                recorded_at_ms: verified.header.recorded_at_ms,
                body,
            }),
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(sequence = e.sequence, cause = %err, "a linkage grant whose body does not decode is not taken")
            }
        }
    }
    Ok(out)
}

/// The newest generation among `grants` sealed to exactly `holders`, opened with `secrets`; an
/// error saying why when there is none, or when this party cannot open the newest (it is then
/// not left deriving under an older generation, which may have been rotated away for a cause).
pub fn newest_key(
    grants: &[LinkageGrant],
    agreement: &str,
    holders: &BTreeSet<PartyId>,
    secrets: &PartySecrets,
) -> Result<LinkageKey, String> {
    let newest = grants
        .iter()
        .filter(|g| {
            let members: BTreeSet<&str> = g.body.members.iter().map(|m| m.party.as_str()).collect();
            let exact = members == holders.iter().map(PartyId::as_str).collect::<BTreeSet<_>>()
                && members.len() == g.body.members.len();
            if !exact {
                tracing::warn!(
                    sequence = g.sequence,
                    generation = g.body.generation,
                    "a linkage grant not sealed to exactly the agreement's holders is not taken"
                );
            }
            exact
        })
        .max_by_key(|g| g.body.generation)
        .ok_or_else(|| "no linkage key has been granted".to_owned())?;
    LinkageKey::open(agreement, newest.body.generation, &newest.body.members, secrets).ok_or_else(|| {
        format!(
            "generation {} of the linkage key (log sequence {}) does not open for {} under its current key: the \
             custodian grants the key again",
            newest.body.generation, newest.sequence, secrets.party
        )
    })
}

/// Grant the next generation of `agreement`'s linkage key, as its custodian `producer`, to
/// `holders` (each with its current encryption key): a signed `LinkageKeyGranted` appended to
/// the log. The log sequence and the generation granted.
pub async fn grant_next(
    producer: &mut crate::Producer,
    log: &impl crate::SharedLog,
    directory: &Directory,
    agreement: &str,
    holders: &[(PartyId, hru_envelope::EncryptionKey)],
    reason: &str,
    policy: &(dyn hru_envelope::AudiencePolicy + Sync),
) -> Result<(u64, u32), crate::StoreError> {
    let custodian = producer.sealer().producer().party.clone();
    let existing = grants(log.reader(), directory, agreement, &custodian).await?;
    let generation = existing.iter().map(|g| g.body.generation).max().unwrap_or(0) + 1;
    let key = LinkageKey::generate(generation, &mut rand_core::OsRng);
    let body = pb::LinkageKeyGranted {
        agreement: agreement.to_owned(),
        generation,
        members: key.grant(agreement, holders, &mut rand_core::OsRng),
        reason: reason.to_owned(),
    };
    let now_ms = jiff::Timestamp::now().as_millisecond();
    let batch = producer
        .sealer()
        .prepare_public(EventType::LinkageKeyGranted, body.encode_to_vec(), now_ms, policy)
        .map_err(|e| crate::StoreError::Seal(e.to_string()))?;
    let sequences = producer.append(log, &batch, crate::Expect::Any).await?;
    Ok((sequences.last().copied().unwrap_or_default(), generation))
}
