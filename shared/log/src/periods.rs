//! Period keys on the log (decision 010): a party's key holder keeps its chains in a private
//! file, publishes the coming months' public keys in a signed `PeriodKeysPublished`, and moves
//! its chains past expired months; producers seal grants to the keys the log last published.

use std::path::{Path, PathBuf};

use hru_broker::{Filter, Subject};
use hru_domain::{EventType, PartyId};
use hru_envelope::{AudiencePolicy, Directory, PeriodKeys, PeriodPublic, PeriodsDestroyed};
use hru_wire::v1 as pb;
use prost::Message as _;

use crate::producer::replace_private_file;
use crate::read::Reader;
use crate::{Expect, LogError, Producer, SharedLog, StoreError};

pub use hru_envelope::{PUBLISH_MONTHS, published_through};

/// A party's period chains, kept in a private file replaced atomically on every change.
#[derive(Debug)]
pub struct PeriodHolder {
    path: PathBuf,
    keys: PeriodKeys,
}

impl PeriodHolder {
    /// Open the holder's file at `path`, or start with no chains (written on the first change).
    pub fn open(path: &Path, party: &PartyId) -> Result<Self, StoreError> {
        let err = |reason: String| StoreError::Store {
            path: path.display().to_string(),
            reason,
        };
        let keys = match std::fs::read_to_string(path) {
            Ok(text) => {
                let keys = PeriodKeys::from_toml(&text, &path.display().to_string()).map_err(|e| err(e.to_string()))?;
                if keys.party() != party {
                    return Err(err(format!("holds the period keys of {}, not {party}", keys.party())));
                }
                keys
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => PeriodKeys::new(party.clone()),
            Err(e) => return Err(err(e.to_string())),
        };
        Ok(Self {
            path: path.to_owned(),
            keys,
        })
    }

    /// The chains.
    pub fn keys(&self) -> &PeriodKeys {
        &self.keys
    }

    fn save(&self) -> Result<(), StoreError> {
        replace_private_file(&self.path, self.keys.to_toml().as_bytes()).map_err(|reason| StoreError::Store {
            path: self.path.display().to_string(),
            reason,
        })
    }

    /// Start a chain at `month` for each of `classes` that has none; saved before returning.
    pub fn ensure(&mut self, classes: impl IntoIterator<Item = String>, month: &str) -> Result<(), StoreError> {
        let mut rng = rand_core::OsRng;
        let mut changed = !self.path.exists();
        for class in classes {
            changed |= self.keys.start(&class, month, &mut rng).map_err(StoreError::Seal)?;
        }
        if changed { self.save() } else { Ok(()) }
    }

    /// Move every chain past the months whose retention ended by `at_ms`; the file is replaced
    /// before this returns, so what it reports destroyed is gone from what the holder keeps.
    pub fn destroy_expired(&mut self, at_ms: i64) -> Result<Vec<PeriodsDestroyed>, StoreError> {
        let destroyed = self.keys.destroy_expired(at_ms);
        if !destroyed.is_empty() {
            self.save()?;
        }
        Ok(destroyed)
    }
}

/// Every retention class `policy` gives an event type, and the class of legal holds' keys.
pub fn classes(policy: &dyn AudiencePolicy) -> std::collections::BTreeSet<String> {
    EventType::ALL
        .iter()
        .map(|t| policy.retention_class(*t))
        .chain(std::iter::once(hru_envelope::HOLD_CLASS.to_owned()))
        .collect()
}

/// The subject of a party's period-key publications.
fn subject(party: &PartyId) -> Subject {
    Subject::control(party, EventType::PeriodKeysPublished)
}

/// The keys of a verified `PeriodKeysPublished` signed by `party`.
fn keys_of(directory: &Directory, party: &PartyId, bytes: &[u8]) -> Result<Vec<PeriodPublic>, String> {
    let v = hru_envelope::verify(bytes, directory).map_err(|e| e.to_string())?;
    if v.header.event_type != EventType::PeriodKeysPublished || v.header.producer.party != *party {
        return Err(format!("is not a PeriodKeysPublished signed by {party}"));
    }
    let body = pb::PeriodKeysPublished::decode(v.body.as_slice()).map_err(|e| format!("body: {e}"))?;
    if body.party != party.as_str() {
        return Err(format!("body.party {:?} is not the signer {party}", body.party));
    }
    body.keys
        .into_iter()
        .enumerate()
        .map(|(i, k)| {
            let public: [u8; 32] = k
                .public_key
                .as_slice()
                .try_into()
                .map_err(|_| format!("keys[{i}].public_key must be 32 bytes"))?;
            Ok(PeriodPublic {
                class: k.retention,
                month: k.month,
                public,
            })
        })
        .collect()
}

/// `directory` with the period keys each of its parties last published on the log `reader`
/// reads. A publication that does not verify as its party's own is skipped and logged: grants
/// to that party then fall back to what it published before, or its long-term key.
pub async fn directory_with_periods(reader: &Reader, directory: &Directory) -> Result<Directory, LogError> {
    let mut out = directory.clone();
    for (party, _) in directory.parties() {
        let Some(entry) = reader.last_of(&Filter::exactly(&subject(party))).await? else {
            continue;
        };
        match keys_of(directory, party, &entry.payload).and_then(|keys| out.add_period_keys(party, keys)) {
            Ok(_) => {}
            Err(e) => tracing::warn!(%party, sequence = entry.sequence, cause = %e, "period keys not taken"),
        }
    }
    Ok(out)
}

/// Publish the holder's public keys for this month and the next [`PUBLISH_MONTHS`] − 1, unless
/// the party's last publication already holds exactly those keys. The log sequence published.
pub async fn publish(
    producer: &mut Producer,
    log: &impl SharedLog,
    policy: &(dyn AudiencePolicy + Sync),
    holder: &PeriodHolder,
    now_ms: i64,
) -> Result<Option<u64>, StoreError> {
    let party = producer.sealer().producer().party.clone();
    let month = hru_envelope::month_at(now_ms).ok_or_else(|| StoreError::Seal(format!("{now_ms} ms is no month")))?;
    let keys = holder.keys().publication(&month, PUBLISH_MONTHS);
    if keys.is_empty() {
        return Ok(None);
    }
    if let Some(last) = log.reader().last_of(&Filter::exactly(&subject(&party))).await? {
        let same = pb::Envelope::decode(last.payload.as_ref())
            .ok()
            .and_then(|e| pb::PeriodKeysPublished::decode(e.body.as_slice()).ok())
            .is_some_and(|p| {
                p.party == party.as_str()
                    && keys.iter().all(|k| {
                        p.keys
                            .iter()
                            .any(|q| q.retention == k.class && q.month == k.month && q.public_key == k.public)
                    })
            });
        if same {
            return Ok(None);
        }
    }
    let body = pb::PeriodKeysPublished {
        party: party.to_string(),
        keys: keys
            .into_iter()
            .map(|k| pb::PeriodKey {
                retention: k.class,
                month: k.month,
                public_key: k.public.to_vec(),
            })
            .collect(),
    };
    let batch = producer
        .sealer()
        .prepare_public(EventType::PeriodKeysPublished, body.encode_to_vec(), now_ms, policy)
        .map_err(|e| StoreError::Seal(e.to_string()))?;
    let sequences = producer.append(log, &batch, Expect::Any).await?;
    Ok(sequences.last().copied())
}

/// A holder's round, on start (before serving) and on every sweep: move the chains past the
/// months whose retention ended by `now_ms`, confirm on the log each destroyed epoch granted to
/// the party, start a chain for each class of `policy` that has none, and publish the coming
/// months' keys if the log does not hold them. What was destroyed.
pub async fn keep(
    holder: &mut PeriodHolder,
    producer: &mut Producer,
    log: &impl SharedLog,
    policy: &(dyn AudiencePolicy + Sync),
    directory: &Directory,
    now_ms: i64,
) -> Result<Vec<PeriodsDestroyed>, StoreError> {
    let party = producer.sealer().producer().party.clone();
    if holder.keys().first_months().next().is_none()
        && let Some(last) = log.reader().last_of(&Filter::exactly(&subject(&party))).await?
    {
        // A holder without chains while the log holds the party's keys: its file was lost or
        // this is a second holder. New chains would fork the party's keys (grants already
        // made open only with the old file), so nothing starts until an operator decides.
        return Err(StoreError::Store {
            path: holder.path.display().to_string(),
            reason: format!(
                "holds no period keys, but the log holds {party}'s keys (published at sequence {}): restore this file from where its holder kept it, or start new chains deliberately with `hru keys periods --party {party} --keys DIR --replace` and point this holder at that file",
                last.sequence
            ),
        });
    }
    let destroyed = holder.destroy_expired(now_ms)?;
    confirm_destroyed(holder, producer, log, policy, directory, now_ms).await?;
    let month = hru_envelope::month_at(now_ms).ok_or_else(|| StoreError::Seal(format!("{now_ms} ms is no month")))?;
    holder.ensure(classes(policy), &month)?;
    publish(producer, log, policy, holder, now_ms).await?;
    Ok(destroyed)
}

/// Sign an `EpochKeyDestroyed` for every epoch granted to the holder's party, on the log
/// `log` reads, whose grant to it is sealed to a period key its chains can no longer derive,
/// unless the party already signed one. An epoch sealed to the party's long-term key is never
/// confirmed: that key still opens it. How many were confirmed.
pub async fn confirm_destroyed(
    holder: &PeriodHolder,
    producer: &mut Producer,
    log: &impl SharedLog,
    policy: &(dyn AudiencePolicy + Sync),
    directory: &Directory,
    now_ms: i64,
) -> Result<usize, StoreError> {
    let party = holder.keys().party().clone();
    let Some(long_term) = directory.party(&party).map(|e| e.encryption.key_id) else {
        return Ok(0);
    };
    let mut confirmed = std::collections::BTreeSet::new();
    let mine = Filter::exactly(&Subject::control(&party, EventType::EpochKeyDestroyed));
    let mut entries = log.reader().replay(1, &[mine]).await?;
    while let Some(e) = futures::TryStreamExt::try_next(&mut entries).await? {
        if let Ok(v) = hru_envelope::verify(&e.payload, directory)
            && v.header.producer.party == party
            && let Ok(d) = pb::EpochKeyDestroyed::decode(v.body.as_slice())
        {
            confirmed.insert((d.producer, d.instance, d.audience, d.epoch));
        }
    }
    let mut due = Vec::new();
    let mut grants = log.reader().replay(1, &[Filter::all_key_grants()]).await?;
    while let Some(e) = futures::TryStreamExt::try_next(&mut grants).await? {
        let Ok(v) = hru_envelope::verify(&e.payload, directory) else {
            continue;
        };
        let Ok(g) = pb::KeyGranted::decode(v.body.as_slice()) else {
            continue;
        };
        // Only a grant consistent with its signer (the producer it names, the audience its
        // members make), and only when it is sealed to a key this holder's chains destroyed:
        // never a month the chains never had, nor a long-term key, which still opens it.
        let members: Option<Vec<PartyId>> = g.members.iter().map(|m| m.party.parse().ok()).collect();
        let consistent = v.header.producer.party.as_str() == g.producer
            && members
                .and_then(hru_envelope::Audience::new)
                .is_some_and(|a| a.id().as_str() == g.audience && a.members().len() == g.members.len());
        let to_me = g.members.iter().find(|m| m.party == party.as_str());
        let erased = consistent
            && to_me.is_some_and(|m| {
                m.key_id.as_slice() != long_term.0.as_slice()
                    && <[u8; 8]>::try_from(m.key_id.as_slice())
                        .is_ok_and(|id| holder.keys().destroyed_key(&hru_domain::KeyId(id)))
            });
        let key = (g.producer, v.header.producer.instance.clone(), g.audience, g.epoch);
        if erased && !confirmed.contains(&key) {
            confirmed.insert(key.clone());
            due.push(key);
        }
    }
    for (producer_party, instance, audience, epoch) in &due {
        let body = pb::EpochKeyDestroyed {
            producer: producer_party.clone(),
            audience: audience.clone(),
            epoch: *epoch,
            instance: instance.clone(),
        };
        let batch = producer
            .sealer()
            .prepare_public(EventType::EpochKeyDestroyed, body.encode_to_vec(), now_ms, policy)
            .map_err(|e| StoreError::Seal(e.to_string()))?;
        producer.append(log, &batch, Expect::Any).await?;
        tracing::info!(producer = %producer_party, %audience, epoch, "destruction of a granted epoch key confirmed");
    }
    Ok(due.len())
}
