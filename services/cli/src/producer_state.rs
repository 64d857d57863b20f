//! Where a CLI producer keeps its durable state: a store beside its secret key.

use std::path::{Path, PathBuf};

use hru_domain::ProducerId;
use hru_envelope::Directory;
use hru_log::Producer;

use crate::CliLog;

/// The store directory of `producer` in the keys directory.
pub(crate) fn path(keys_dir: &Path, producer: &ProducerId) -> PathBuf {
    keys_dir.join(format!("{}.{}.producer", producer.party, producer.instance))
}

/// Open the producer's store (rebuilt from the log when absent; its outbox published).
pub(crate) async fn open(
    keys_dir: &Path,
    producer: ProducerId,
    signing: ed25519_dalek::SigningKey,
    log: &CliLog,
    directory: &Directory,
) -> anyhow::Result<Producer> {
    let p = path(keys_dir, &producer);
    Ok(Producer::open(&p, producer, signing, log, directory).await?)
}

/// A party producing from the command line: its log, directory, agreement in force and
/// durable producer.
pub(crate) struct PartyProducer {
    pub(crate) log: CliLog,
    pub(crate) directory: Directory,
    pub(crate) isa: hru_policy::CompiledIsa,
    pub(crate) producer: Producer,
}

impl PartyProducer {
    /// Connect as `party`'s producer `instance`, under the agreement in force now, and destroy
    /// its epoch keys whose retention has ended.
    pub(crate) async fn open(
        nats: &crate::Broker,
        policies_dir: &Path,
        keys_dir: &Path,
        party: &hru_domain::PartyId,
        instance: &str,
    ) -> anyhow::Result<Self> {
        let mut me = Self::open_unswept(nats, policies_dir, keys_dir, party, instance).await?;
        me.destroy_expired(jiff::Timestamp::now().as_millisecond()).await?;
        Ok(me)
    }

    /// Connect as `party`'s producer `instance`, under the agreement in force now, destroying
    /// nothing yet (a legal hold is placed before the producer's expired keys go).
    pub(crate) async fn open_unswept(
        nats: &crate::Broker,
        policies_dir: &Path,
        keys_dir: &Path,
        party: &hru_domain::PartyId,
        instance: &str,
    ) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let directory = crate::policies::directory(policies_dir)?;
        let set = crate::policies::agreements(policies_dir, &directory)?;
        let isa = crate::policies::in_force(&set, jiff::Timestamp::now().as_millisecond())?.clone();
        nats.check_acting_as(party)?;
        let secrets = crate::keys::load(keys_dir, party)?;
        let id = ProducerId::try_from(hru_wire::v1::Producer {
            party: party.to_string(),
            instance: instance.to_owned(),
        })
        .context("--instance")?;
        let log = nats.log().await?;
        let producer = open(keys_dir, id, secrets.signing.clone(), &log, &directory).await?;
        Ok(Self {
            log,
            directory,
            isa,
            producer,
        })
    }

    /// Destroy this producer's epoch keys whose retention has ended by `at_ms`, each announced
    /// by a signed `EpochKeyDestroyed`; what was destroyed.
    pub(crate) async fn destroy_expired(&mut self, at_ms: i64) -> anyhow::Result<Vec<(hru_domain::AudienceId, u32)>> {
        let destroyed = self
            .producer
            .destroy_expired(
                &self.log,
                at_ms,
                jiff::Timestamp::now().as_millisecond(),
                &self.isa,
                &self.directory,
            )
            .await?;
        for (audience, epoch) in &destroyed {
            eprintln!(
                "destroyed {} epoch {epoch} of audience {audience}: its retention has ended",
                self.producer.sealer().producer()
            );
        }
        Ok(destroyed)
    }

    /// Seal and append one public event now; its stream sequence and recorded time.
    pub(crate) async fn append_public(
        &mut self,
        event_type: hru_domain::EventType,
        body: Vec<u8>,
    ) -> anyhow::Result<(u64, i64)> {
        let now = jiff::Timestamp::now().as_millisecond();
        let batch = self
            .producer
            .sealer()
            .prepare_public(event_type, body, now, &self.isa)?;
        let sequences = self.producer.append(&self.log, &batch, hru_log::Expect::Any).await?;
        Ok((sequences.last().copied().unwrap_or_default(), now))
    }
}
