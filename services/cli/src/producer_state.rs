//! Where a CLI producer keeps its durable state: a store beside its secret key.

use std::path::{Path, PathBuf};

use hru_domain::ProducerId;
use hru_envelope::Directory;
use hru_log::{EventLog, Producer};

/// The store directory of `producer` in the keys directory.
pub(crate) fn path(keys_dir: &Path, producer: &ProducerId) -> PathBuf {
    keys_dir.join(format!("{}.{}.producer", producer.party, producer.instance))
}

/// Open the producer's store (rebuilt from the log when absent; its outbox published).
pub(crate) async fn open(
    keys_dir: &Path,
    producer: ProducerId,
    signing: ed25519_dalek::SigningKey,
    log: &EventLog,
    directory: &Directory,
) -> anyhow::Result<Producer> {
    let p = path(keys_dir, &producer);
    Ok(Producer::open(&p, producer, signing, log, directory).await?)
}
