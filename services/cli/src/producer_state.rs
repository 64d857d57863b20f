//! A producer's chain head and epoch keys between runs: a private file beside its secret key,
//! or, when that is lost, the chain head recovered from the log.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hru_domain::{AudienceId, Digest, EventType, KeyId, PartyId, ProducerId};
use hru_envelope::{ChainHead, Directory, EpochState, Sealer, verify};
use hru_log::EventLog;
use hru_wire::v1 as pb;
use prost::Message as _;
use serde::{Deserialize, Serialize};

use crate::keys::write_private;

#[derive(Serialize, Deserialize)]
struct StateFile {
    next_seq: u64,
    prev_digest: String,
    epochs: BTreeMap<String, EpochRow>,
}

#[derive(Serialize, Deserialize)]
struct EpochRow {
    epoch: u32,
    month: String,
    policy_version: u32,
    members: Vec<(String, String)>,
    key: String,
}

fn path(dir: &Path, producer: &ProducerId) -> PathBuf {
    dir.join(format!("{}.{}.producer.json", producer.party, producer.instance))
}

/// Save the sealer's chain head and epochs (mode 0600: it holds epoch keys).
pub(crate) fn save(dir: &Path, sealer: &Sealer) -> anyhow::Result<()> {
    let chain = sealer.chain();
    let file = StateFile {
        next_seq: chain.next_seq,
        prev_digest: chain.prev_digest.to_string(),
        epochs: sealer
            .epochs()
            .iter()
            .map(|(a, e)| {
                let members = e.members.iter().map(|(p, k)| (p.to_string(), k.to_string())).collect();
                let row = EpochRow {
                    epoch: e.epoch,
                    month: e.month.clone(),
                    policy_version: e.policy_version,
                    members,
                    key: B64.encode(e.key.bytes()),
                };
                (a.to_string(), row)
            })
            .collect(),
    };
    write_private(&path(dir, sealer.producer()), &serde_json::to_string_pretty(&file)?)
}

/// Load the sealer of `producer`: from its state file, or recovered from the log.
pub(crate) async fn load(
    dir: &Path,
    producer: ProducerId,
    signing: ed25519_dalek::SigningKey,
    log: &EventLog,
    directory: &Directory,
) -> anyhow::Result<Sealer> {
    let p = path(dir, &producer);
    match std::fs::read_to_string(&p) {
        Ok(text) => parse(&text, producer, signing).with_context(|| format!("reading {}", p.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => recover(producer, signing, log, directory).await,
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

fn parse(text: &str, producer: ProducerId, signing: ed25519_dalek::SigningKey) -> anyhow::Result<Sealer> {
    let file: StateFile = serde_json::from_str(text)?;
    let prev = hex::decode(&file.prev_digest).context("prev_digest")?;
    let chain = ChainHead {
        next_seq: file.next_seq,
        prev_digest: Digest::from_wire(&prev, "prev_digest")?,
    };
    let mut epochs = BTreeMap::new();
    for (audience, row) in file.epochs {
        let key: [u8; 32] = B64
            .decode(&row.key)
            .ok()
            .and_then(|k| k.try_into().ok())
            .with_context(|| format!("epochs.{audience}.key is not a base64 32-byte key"))?;
        let members = row
            .members
            .iter()
            .map(|(p, k)| {
                let kid = hex::decode(k).context("member key id")?;
                Ok((PartyId::parse(p, "member")?, KeyId::from_wire(&kid, "member key id")?))
            })
            .collect::<anyhow::Result<_>>()?;
        let state = EpochState {
            epoch: row.epoch,
            month: row.month,
            policy_version: row.policy_version,
            members,
            key: hru_envelope::EpochKey::new(key),
        };
        epochs.insert(AudienceId::parse(&audience, "audience")?, state);
    }
    Ok(Sealer::resume(producer, signing, chain, epochs))
}

/// Rebuild the chain head (and the epoch numbers already used) from the producer's own
/// envelopes in the log; epoch keys are not recovered, so new epochs are granted.
async fn recover(
    producer: ProducerId,
    signing: ed25519_dalek::SigningKey,
    log: &EventLog,
    directory: &Directory,
) -> anyhow::Result<Sealer> {
    let party = &producer.party;
    let filters = [
        format!("hru.evt.*.{party}.*"),
        format!("hru.key.{party}.*"),
        format!("hru.ctl.{party}.*"),
    ];
    let mut chain = ChainHead::GENESIS;
    let mut used = Vec::new();
    for entry in log.replay(1, &filters).await? {
        let Ok(v) = verify(&entry.payload, directory) else {
            continue;
        };
        if v.header.producer != producer || v.header.producer_seq < chain.next_seq {
            continue;
        }
        chain = ChainHead {
            next_seq: v.header.producer_seq + 1,
            prev_digest: v.digest,
        };
        if v.header.event_type == EventType::KeyGranted
            && let Ok(grant) = pb::KeyGranted::decode(v.body.as_slice())
            && let Ok(audience) = AudienceId::parse(&grant.audience, "audience")
        {
            used.push((audience, grant.epoch));
        }
    }
    let mut sealer = Sealer::resume(producer, signing, chain, BTreeMap::new());
    for (audience, epoch) in used {
        sealer.note_used_epoch(audience, epoch);
    }
    Ok(sealer)
}
