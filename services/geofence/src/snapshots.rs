//! Geofence state snapshots on the broker (`HRU_SNAPSHOTS`): the engine's state with the exact
//! cut of its inputs it covers, sealed to the geofence's own period key of the position
//! retention class for the month it was taken (so it is put beyond use with the positions it
//! holds), cut into chunks, and named by a manifest the geofence signs.
//!
//! Three slots are written in turn, each replacing what was there. On start the newest
//! snapshot that verifies, opens and decodes is used; any other is passed over with its reason
//! logged, so a torn or corrupt write falls back to the one before, and with none left the
//! service replays everything. Never a wrong state: a snapshot is used only when its signature,
//! every chunk's digest, the AEAD and the engine thresholds all agree.

use bytes::Bytes;
use hru_domain::PartyId;
use hru_envelope::{Directory, PartySecrets, PeriodKeys};
use hru_log::{KeptStream, LogError};
use hru_wire::v1 as pb;
use prost::Message as _;
use sha2::{Digest as _, Sha256};

/// Domain separation of a snapshot manifest's signature.
pub const MANIFEST_DOMAIN: &[u8] = b"hru.v1.SnapshotManifest\0";
/// Slots written in turn: the newest snapshot and two before it are kept.
pub const SLOTS: u32 = 3;
/// Chunk size, well under the server's default maximum payload (1 MiB).
pub const CHUNK_BYTES: usize = 512 * 1024;
/// The format of `GeofenceSnapshot` this build writes and reads.
pub const FORMAT: u32 = 1;

/// Why a snapshot was not written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The party holds no key of the class for the month (its period chain does not reach it).
    #[error("no period key of class {class} for {month}: the snapshot cannot be sealed")]
    NoKey {
        /// Retention class.
        class: String,
        /// Month.
        month: String,
    },
    /// The broker refused or did not answer.
    #[error(transparent)]
    Log(#[from] LogError),
}

/// What was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// The slot.
    pub slot: u32,
    /// Sealed bytes.
    pub bytes: usize,
    /// Chunks.
    pub chunks: usize,
}

/// A snapshot passed over on start, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The manifest's stream sequence.
    pub sequence: u64,
    /// Why it was not used.
    pub reason: String,
}

/// What loading found: the snapshot used (as the caller accepted it), if any, and those
/// passed over (newest first).
#[derive(Debug)]
pub struct Loaded<T> {
    /// The newest usable snapshot.
    pub snapshot: Option<T>,
    /// The slot it was read from.
    pub slot: Option<u32>,
    /// Newer snapshots that could not be used.
    pub rejected: Vec<Rejected>,
}

/// One geofence instance's snapshots.
pub struct Snapshots {
    log: KeptStream,
    party: PartyId,
    instance: String,
    class: String,
    next_slot: u32,
}

fn digest(bytes: &[u8]) -> Vec<u8> {
    Sha256::digest(bytes).to_vec()
}

/// What the seal binds: where the snapshot belongs and the cut it covers.
fn aad(m: &pb::SnapshotManifest) -> Vec<u8> {
    format!(
        "hru.v1.GeofenceSnapshot\0{}\0{}\0{}\0{}\0{}\0{}",
        m.party, m.instance, m.slot, m.next_event, m.next_position, m.taken_at_ms
    )
    .into_bytes()
}

impl Snapshots {
    /// The snapshots of `party`'s `instance`, sealed under retention `class`.
    pub fn new(log: KeptStream, party: PartyId, instance: String, class: String) -> Self {
        Self {
            log,
            party,
            instance,
            class,
            next_slot: 0,
        }
    }

    /// The month whose period key seals a snapshot taken at `taken_at_ms` that holds positions
    /// back to `oldest_ms`: the month of the oldest position, so the snapshot is put beyond use
    /// when that position's retention ends, not a retention later; or the first month the
    /// party's chain holds, when it started after that.
    pub fn seal_month(&self, periods: &PeriodKeys, oldest_ms: i64) -> Option<String> {
        let oldest = hru_envelope::month_at(oldest_ms)?;
        let first = periods
            .first_months()
            .find(|(class, _)| *class == self.class)
            .map(|(_, month)| month.to_owned())?;
        Some(oldest.max(first))
    }

    /// Seal `snapshot` to this party's own period key for `month` (see [`Snapshots::seal_month`]),
    /// write it to the next slot, chunks first, then its signed manifest.
    pub async fn write(
        &mut self,
        snapshot: &pb::GeofenceSnapshot,
        month: String,
        periods: &PeriodKeys,
        secrets: &PartySecrets,
    ) -> Result<Written, WriteError> {
        let slot = self.next_slot;
        let mut manifest = pb::SnapshotManifest {
            party: self.party.to_string(),
            instance: self.instance.clone(),
            next_event: snapshot.next_event,
            next_position: snapshot.next_position,
            taken_at_ms: snapshot.taken_at_ms,
            retention_class: self.class.clone(),
            month: month.clone(),
            enc: Vec::new(),
            chunks: Vec::new(),
            slot,
        };
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_entropy();
        let (enc, sealed) = periods
            .seal_own(
                &self.class,
                &month,
                &aad(&manifest),
                &snapshot.encode_to_vec(),
                &mut rng,
            )
            .ok_or_else(|| WriteError::NoKey {
                class: self.class.clone(),
                month,
            })?;
        manifest.enc = enc;
        for (i, chunk) in sealed.chunks(CHUNK_BYTES).enumerate() {
            let subject = hru_broker::Subject::snapshot(&self.party, &self.instance, slot, &i.to_string());
            let sequence = self.log.put(&subject, Bytes::copy_from_slice(chunk)).await?;
            manifest.chunks.push(pb::SnapshotChunk {
                sequence,
                digest: digest(chunk),
            });
        }
        let body = manifest.encode_to_vec();
        let signed = hru_envelope::sign_detached(secrets, MANIFEST_DOMAIN, &body);
        let signed = pb::SignedManifest {
            manifest: body,
            key_id: signed.key_id,
            signature: signed.signature,
        };
        let subject = hru_broker::Subject::snapshot(&self.party, &self.instance, slot, "m");
        self.log.put(&subject, signed.encode_to_vec().into()).await?;
        self.next_slot = (slot + 1) % SLOTS;
        Ok(Written {
            slot,
            bytes: sealed.len(),
            chunks: manifest.chunks.len(),
        })
    }

    /// The newest snapshot that verifies under `directory` (signed by a key of this party valid
    /// when the broker stored its manifest), opens with `periods`, was taken under thresholds
    /// with `config_digest`, and that `accept` takes (it checks the cut against the log and
    /// parses the state); every newer one is passed over with its reason. The next write goes
    /// to the slot after the newest manifest.
    pub async fn load<T>(
        &mut self,
        periods: &PeriodKeys,
        directory: &Directory,
        config_digest: &[u8],
        mut accept: impl FnMut(pb::GeofenceSnapshot) -> Result<T, String>,
    ) -> Result<Loaded<T>, LogError> {
        let filter = hru_broker::Filter::snapshot_manifests(&self.party, &self.instance);
        let mut manifests = Vec::new();
        let mut loaded = Loaded {
            snapshot: None,
            slot: None,
            rejected: Vec::new(),
        };
        for entry in self.log.list(&filter).await? {
            let stored_ms = match entry.stored {
                hru_broker::StoredAt::Exactly(ms) => Some(ms),
                _ => None,
            };
            match self.manifest(&entry.subject, &entry.payload, stored_ms, directory) {
                Ok(m) => manifests.push((entry.sequence, m)),
                Err(reason) => loaded.rejected.push(Rejected {
                    sequence: entry.sequence,
                    reason,
                }),
            }
        }
        manifests.sort_by_key(|(seq, m)| std::cmp::Reverse((m.taken_at_ms, *seq)));
        if let Some((_, newest)) = manifests.first() {
            self.next_slot = (newest.slot + 1) % SLOTS;
        }
        for (sequence, m) in manifests {
            let opened = match self.open(&m, periods, config_digest).await {
                Ok(opened) => opened,
                Err(e) => Err(format!("chunks not read: {e}")),
            };
            match opened.and_then(&mut accept) {
                Ok(snapshot) => {
                    loaded.snapshot = Some(snapshot);
                    loaded.slot = Some(m.slot);
                    break;
                }
                Err(reason) => loaded.rejected.push(Rejected { sequence, reason }),
            }
        }
        Ok(loaded)
    }

    /// A manifest that verifies as this party's, for this instance, in the slot it names, under
    /// a key valid when the broker stored it (`stored_ms`; else when it says it was taken): a
    /// revoked key cannot sign a snapshot that is believed.
    fn manifest(
        &self,
        subject: &hru_broker::Subject,
        payload: &[u8],
        stored_ms: Option<i64>,
        directory: &Directory,
    ) -> Result<pb::SnapshotManifest, String> {
        let signed = pb::SignedManifest::decode(payload).map_err(|e| format!("not a SignedManifest: {e}"))?;
        let m = pb::SnapshotManifest::decode(signed.manifest.as_slice())
            .map_err(|e| format!("field `manifest` is not a SnapshotManifest: {e}"))?;
        let detached = hru_envelope::Detached {
            key_id: signed.key_id,
            signature: signed.signature,
        };
        hru_envelope::verify_detached(
            directory,
            &self.party,
            stored_ms.unwrap_or(m.taken_at_ms),
            MANIFEST_DOMAIN,
            &signed.manifest,
            &detached,
        )
        .map_err(|e| format!("signature: {e}"))?;
        let expected = hru_broker::Subject::snapshot(&self.party, &self.instance, m.slot, "m");
        if m.party != self.party.as_str() || m.instance != self.instance || *subject != expected {
            return Err(format!(
                "names {}/{} slot {}, stored under {subject}",
                m.party, m.instance, m.slot
            ));
        }
        Ok(m)
    }

    /// The snapshot a verified manifest names, or why it cannot be used.
    async fn open(
        &self,
        m: &pb::SnapshotManifest,
        periods: &PeriodKeys,
        config_digest: &[u8],
    ) -> Result<Result<pb::GeofenceSnapshot, String>, LogError> {
        let mut sealed = Vec::new();
        for (i, chunk) in m.chunks.iter().enumerate() {
            let expected = hru_broker::Subject::snapshot(&self.party, &self.instance, m.slot, &i.to_string());
            match self.log.get(chunk.sequence).await? {
                Some((subject, bytes)) if subject == expected && digest(&bytes) == chunk.digest => {
                    sealed.extend_from_slice(&bytes);
                }
                Some(_) => {
                    return Ok(Err(format!(
                        "chunk {i} (sequence {}) is not the one written",
                        chunk.sequence
                    )));
                }
                None => return Ok(Err(format!("chunk {i} (sequence {}) is gone", chunk.sequence))),
            }
        }
        let Some(plain) = periods.open_own(&m.retention_class, &m.month, &aad(m), &m.enc, &sealed) else {
            return Ok(Err(format!(
                "does not open under the period key {} {} (destroyed, or not this party's)",
                m.retention_class, m.month
            )));
        };
        let s = match pb::GeofenceSnapshot::decode(plain.as_slice()) {
            Ok(s) => s,
            Err(e) => return Ok(Err(format!("not a GeofenceSnapshot: {e}"))),
        };
        if s.format != FORMAT {
            return Ok(Err(format!("format {} (this build reads {FORMAT})", s.format)));
        }
        if s.config_digest != config_digest {
            return Ok(Err("taken under other engine thresholds".into()));
        }
        if (s.next_event, s.next_position, s.taken_at_ms) != (m.next_event, m.next_position, m.taken_at_ms) {
            return Ok(Err("its cut differs from its manifest's".into()));
        }
        Ok(Ok(s))
    }
}
