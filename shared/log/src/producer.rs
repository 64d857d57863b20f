//! A producer that survives crashes: every sealed envelope goes to a local outbox (sled) before
//! it is published; the chain advances only when the log acknowledges it; on start the outbox
//! is published again (envelopes the log already holds are recognised by id), and a lost
//! store is rebuilt from the producer's own envelopes in the log.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hru_domain::{AudienceId, Digest, EventType, KeyId, PartyId, ProducerId};
use hru_envelope::{ChainHead, Directory, EpochKey, EpochState, SealedBatch, SealedEnvelope, Sealer, verify};
use serde::{Deserialize, Serialize};

use futures::TryStreamExt as _;
use hru_broker::{Filter, Subject};

use crate::{AppendError, Expect, LogError, SharedLog};

/// Why the producer store could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed.
    #[error("producer store {path}: {reason}")]
    Store {
        /// The store's directory.
        path: String,
        /// The error.
        reason: String,
    },
    /// A record does not parse (the store is damaged; remove it to rebuild from the log).
    #[error("producer store {path}: damaged record {key}: {reason}; remove the store to rebuild it from the log")]
    Damaged {
        /// The store's directory.
        path: String,
        /// Record key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The log failed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// An append failed.
    #[error(transparent)]
    Append(#[from] AppendError),
    /// An event could not be sealed (nothing was written).
    #[error("cannot seal: {0}")]
    Seal(String),
}

#[derive(Serialize, Deserialize)]
struct HeadRow {
    next_seq: u64,
    prev_digest: String,
}

#[derive(Serialize, Deserialize)]
struct EpochRow {
    audience: String,
    epoch: u32,
    month: String,
    /// Empty in a store written before epochs had retention classes.
    #[serde(default)]
    retention: String,
    policy_version: u32,
    members: Vec<(String, String)>,
    key: String,
}

#[derive(Serialize, Deserialize)]
struct StateRow {
    head: HeadRow,
    epochs: Vec<EpochRow>,
    /// The highest epoch number per audience among epochs no longer kept (destroyed).
    #[serde(default)]
    used: Vec<(String, u32)>,
    /// Section keys kept for legal holds after their epochs were destroyed.
    #[serde(default)]
    held: Vec<HeldRow>,
}

/// Section keys a producer keeps for a legal hold after destroying their epoch's key: granted
/// again each month under a one-month hold key while the hold stands, dropped when it is
/// released.
#[derive(Debug, Clone)]
struct HeldEpochKeys {
    hold: String,
    case: String,
    audience: AudienceId,
    epoch: u32,
    epoch_retention: String,
    epoch_month: String,
    members: Vec<PartyId>,
    /// The hold-key month last granted, if any.
    granted: Option<String>,
    keys: Vec<hru_envelope::HeldKey>,
}

/// [`HeldEpochKeys`] as stored: each section key wrapped like an epoch key.
#[derive(Serialize, Deserialize)]
struct HeldRow {
    hold: String,
    case: String,
    audience: String,
    epoch: u32,
    epoch_retention: String,
    epoch_month: String,
    members: Vec<String>,
    granted: Option<String>,
    /// (event id, section name, wrapped key).
    keys: Vec<(String, String, String)>,
}

/// What binds a held section key at rest to its place.
fn held_aad(hold: &str, audience: &AudienceId, epoch: u32, event: &hru_domain::EventId, name: &str) -> String {
    format!(
        "hru held section key at rest v1|{hold}|{audience}|{epoch}|{}|{name}",
        event.0
    )
}

fn held_row(h: &HeldEpochKeys, wrap: &WrapKeys) -> HeldRow {
    HeldRow {
        hold: h.hold.clone(),
        case: h.case.clone(),
        audience: h.audience.to_string(),
        epoch: h.epoch,
        epoch_retention: h.epoch_retention.clone(),
        epoch_month: h.epoch_month.clone(),
        members: h.members.iter().map(ToString::to_string).collect(),
        granted: h.granted.clone(),
        keys: h
            .keys
            .iter()
            .map(|k| {
                let aad = held_aad(&h.hold, &h.audience, h.epoch, &k.event_id, &k.name);
                (
                    k.event_id.0.to_string(),
                    k.name.clone(),
                    wrap_stored(wrap, &aad, &k.key),
                )
            })
            .collect(),
    }
}

fn parse_held(r: &HeldRow, wrap: &WrapKeys) -> Result<HeldEpochKeys, String> {
    let audience = AudienceId::parse(&r.audience, "held.audience").map_err(|e| e.to_string())?;
    let members = r
        .members
        .iter()
        .map(|p| PartyId::parse(p, "held.members").map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let keys = r
        .keys
        .iter()
        .map(|(event, name, key)| {
            let event_id = hru_domain::EventId(uuid::Uuid::parse_str(event).map_err(|e| format!("held.keys: {e}"))?);
            let aad = held_aad(&r.hold, &audience, r.epoch, &event_id, name);
            let key = unwrap_stored(wrap, &aad, key)?.ok_or("held.keys: a key is not wrapped")?;
            Ok(hru_envelope::HeldKey {
                event_id,
                name: name.clone(),
                key,
            })
        })
        .collect::<Result<_, String>>()?;
    Ok(HeldEpochKeys {
        hold: r.hold.clone(),
        case: r.case.clone(),
        audience,
        epoch: r.epoch,
        epoch_retention: r.epoch_retention.clone(),
        epoch_month: r.epoch_month.clone(),
        members,
        granted: r.granted.clone(),
        keys,
    })
}

/// One outbox entry: everything needed to publish an envelope and commit it after a restart.
struct OutboxRow {
    subject: String,
    expect: Option<u64>,
    bytes: Vec<u8>,
    head_after: ChainHead,
    epoch: Option<EpochRow>,
}

impl OutboxRow {
    /// Binary layout: next_seq (8) ‖ prev_digest (32) ‖ expect flag (1) ‖ expect (8) ‖
    /// subject length (2) ‖ subject ‖ epoch JSON length (4) ‖ epoch JSON ‖ envelope bytes.
    fn encode(&self) -> Vec<u8> {
        let epoch = self
            .epoch
            .as_ref()
            .and_then(|e| serde_json::to_vec(e).ok())
            .unwrap_or_default();
        let mut out = Vec::with_capacity(55 + self.subject.len() + epoch.len() + self.bytes.len());
        out.extend_from_slice(&self.head_after.next_seq.to_be_bytes());
        out.extend_from_slice(&self.head_after.prev_digest.0);
        out.push(u8::from(self.expect.is_some()));
        out.extend_from_slice(&self.expect.unwrap_or(0).to_be_bytes());
        out.extend_from_slice(&(self.subject.len() as u16).to_be_bytes());
        out.extend_from_slice(self.subject.as_bytes());
        out.extend_from_slice(&(epoch.len() as u32).to_be_bytes());
        out.extend_from_slice(&epoch);
        out.extend_from_slice(&self.bytes);
        out
    }

    fn decode(mut b: &[u8]) -> Result<Self, String> {
        fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
            if b.len() < n {
                return Err("truncated".into());
            }
            let (head, rest) = b.split_at(n);
            *b = rest;
            Ok(head)
        }
        let u64_at = |x: &[u8]| u64::from_be_bytes(x.try_into().unwrap_or([0; 8]));
        let next_seq = u64_at(take(&mut b, 8)?);
        let prev_digest = Digest::from_wire(take(&mut b, 32)?, "prev_digest").map_err(|e| e.to_string())?;
        let has_expect = take(&mut b, 1)?[0] == 1;
        let expect = u64_at(take(&mut b, 8)?);
        let subject_len = usize::from(u16::from_be_bytes(take(&mut b, 2)?.try_into().unwrap_or([0; 2])));
        let subject = String::from_utf8(take(&mut b, subject_len)?.to_vec()).map_err(|e| e.to_string())?;
        let epoch_len = u32::from_be_bytes(take(&mut b, 4)?.try_into().unwrap_or([0; 4])) as usize;
        let epoch_json = take(&mut b, epoch_len)?;
        let epoch = if epoch_len == 0 {
            None
        } else {
            Some(serde_json::from_slice(epoch_json).map_err(|e| e.to_string())?)
        };
        Ok(Self {
            subject,
            expect: has_expect.then_some(expect),
            bytes: b.to_vec(),
            head_after: ChainHead { next_seq, prev_digest },
            epoch,
        })
    }
}

fn head_row(c: ChainHead) -> HeadRow {
    HeadRow {
        next_seq: c.next_seq,
        prev_digest: c.prev_digest.to_string(),
    }
}

/// `key` wrapped under the current wrapping key, bound to `aad`: "w<generation>:<base64>".
fn wrap_stored(wrap: &WrapKeys, aad: &str, key: &[u8; 32]) -> String {
    let (generation, kek) = &wrap.current;
    let wrapped = hru_envelope::wrap_at_rest(kek, aad.as_bytes(), key, &mut rand_core::OsRng);
    format!("w{generation}:{}", B64.encode(wrapped))
}

/// What [`wrap_stored`] wrote, opened; `None` for a value that is not wrapped.
fn unwrap_stored(wrap: &WrapKeys, aad: &str, stored: &str) -> Result<Option<[u8; 32]>, String> {
    let Some((generation, wrapped)) = stored.strip_prefix('w').and_then(|k| k.split_once(':')) else {
        return Ok(None);
    };
    let generation: u64 = generation.parse().map_err(|_| "key: a bad wrapping generation")?;
    let kek = wrap
        .key(generation)
        .ok_or_else(|| format!("key: wrapping key {generation} is gone (destroyed, or the .wrap file was replaced)"))?;
    let wrapped = B64.decode(wrapped).map_err(|e| format!("key: {e}"))?;
    hru_envelope::unwrap_at_rest(kek, aad.as_bytes(), &wrapped)
        .map(Some)
        .ok_or_else(|| "key: does not open under its wrapping key".to_owned())
}

fn epoch_row(audience: &AudienceId, e: &EpochState, wrap: &WrapKeys) -> EpochRow {
    EpochRow {
        audience: audience.to_string(),
        epoch: e.epoch,
        month: e.month.clone(),
        retention: e.retention.clone(),
        policy_version: e.policy_version,
        members: e.members.iter().map(|(p, k)| (p.to_string(), k.to_string())).collect(),
        key: wrap_stored(wrap, &wrap_aad(audience, e.epoch), e.key.bytes()),
    }
}

/// What binds a wrapped epoch key to its place: its audience and epoch.
fn wrap_aad(audience: &AudienceId, epoch: u32) -> String {
    format!("hru epoch key at rest v1|{audience}|{epoch}")
}

/// The keys that wrap a producer's epoch keys at rest, kept in a small file beside its store
/// (`<store>.wrap`, mode 0600). The store (sled) keeps overwritten values in its files, so an
/// epoch key is never written to it in the clear: destroying epochs ends with a new wrapping
/// key, the kept epochs rewrapped under it, and the old one gone from the file, so whatever
/// the store's history still holds opens to nothing.
struct WrapKeys {
    path: std::path::PathBuf,
    current: (u64, [u8; 32]),
    previous: Option<(u64, [u8; 32])>,
}

#[derive(Serialize, Deserialize)]
struct WrapFile {
    current: (u64, String),
    #[serde(default)]
    previous: Option<(u64, String)>,
}

impl WrapKeys {
    fn path_beside(store: &Path) -> std::path::PathBuf {
        let mut name = store.as_os_str().to_owned();
        name.push(".wrap");
        name.into()
    }

    /// Load the wrapping keys beside `store`, or make the first.
    fn open(store: &Path) -> Result<Self, String> {
        let path = Self::path_beside(store);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let file: WrapFile = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
                let key = |(g, k): (u64, String)| -> Result<(u64, [u8; 32]), String> {
                    let k: [u8; 32] = B64
                        .decode(k)
                        .ok()
                        .and_then(|k| k.try_into().ok())
                        .ok_or("a wrapping key is not base64 of 32 bytes")?;
                    Ok((g, k))
                };
                Ok(Self {
                    path,
                    current: key(file.current)?,
                    previous: file.previous.map(key).transpose()?,
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let me = Self {
                    path,
                    current: (1, fresh_key()),
                    previous: None,
                };
                me.write()?;
                Ok(me)
            }
            Err(e) => Err(e.to_string()),
        }
    }

    fn key(&self, generation: u64) -> Option<&[u8; 32]> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|(g, _)| *g == generation)
            .map(|(_, k)| k)
    }

    /// Replace the file atomically (written aside, synced, renamed over, directory synced).
    fn write(&self) -> Result<(), String> {
        let file = WrapFile {
            current: (self.current.0, B64.encode(self.current.1)),
            previous: self.previous.map(|(g, k)| (g, B64.encode(k))),
        };
        let bytes = serde_json::to_vec(&file).map_err(|e| e.to_string())?;
        replace_private_file(&self.path, &bytes)
    }
}

/// Replace a private file (mode 0600) atomically: written aside, synced, renamed over, its
/// directory synced. A reader sees the old content or the new, never a mixture.
pub(crate) fn replace_private_file(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut aside = path.as_os_str().to_owned();
    aside.push(".new");
    let aside = std::path::PathBuf::from(aside);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&aside)
        .map_err(|e| format!("{}: {e}", aside.display()))?;
    f.write_all(bytes).map_err(|e| e.to_string())?;
    f.sync_all().map_err(|e| e.to_string())?;
    std::fs::rename(&aside, path).map_err(|e| e.to_string())?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn fresh_key() -> [u8; 32] {
    let mut k = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut k);
    k
}

fn parse_head(h: &HeadRow) -> Result<ChainHead, String> {
    let bytes = hex::decode(&h.prev_digest).map_err(|e| format!("prev_digest: {e}"))?;
    Ok(ChainHead {
        next_seq: h.next_seq,
        prev_digest: Digest::from_wire(&bytes, "prev_digest").map_err(|e| e.to_string())?,
    })
}

fn parse_epoch(r: &EpochRow, wrap: &WrapKeys) -> Result<(AudienceId, EpochState), String> {
    let audience = AudienceId::parse(&r.audience, "audience").map_err(|e| e.to_string())?;
    let key: [u8; 32] = match unwrap_stored(wrap, &wrap_aad(&audience, r.epoch), &r.key)? {
        Some(key) => key,
        // A store written before keys were wrapped: rewrapped when next saved.
        None => B64
            .decode(&r.key)
            .ok()
            .and_then(|k| k.try_into().ok())
            .ok_or("key is not a base64 32-byte key")?,
    };
    let members = r
        .members
        .iter()
        .map(|(p, k)| {
            let kid = hex::decode(k).map_err(|e| e.to_string())?;
            Ok((
                PartyId::parse(p, "member").map_err(|e| e.to_string())?,
                KeyId::from_wire(&kid, "key id").map_err(|e| e.to_string())?,
            ))
        })
        .collect::<Result<_, String>>()?;
    let state = EpochState {
        epoch: r.epoch,
        month: r.month.clone(),
        retention: r.retention.clone(),
        policy_version: r.policy_version,
        members,
        key: EpochKey::new(key),
    };
    Ok((audience, state))
}

/// A producer with a durable outbox in front of the log.
pub struct Producer {
    sealer: Sealer,
    /// Section keys kept for legal holds.
    held: Vec<HeldEpochKeys>,
    wrap: WrapKeys,
    db: sled::Db,
    state: sled::Tree,
    outbox: sled::Tree,
    path: String,
}

const STATE_KEY: &[u8] = b"state";
/// Envelopes per atomic batch (the server's limit is 1,000 by default).
const ATOMIC_CHUNK: usize = 500;

/// Events sealed together, ready for [`Producer::publish_group`].
#[derive(Debug, Clone)]
pub struct SealedGroup {
    batches: Vec<SealedBatch>,
}

impl SealedGroup {
    /// Number of envelopes (grants included).
    pub fn len(&self) -> usize {
        self.batches.iter().map(|b| b.envelopes.len()).sum()
    }

    /// Whether the group is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Seals groups of events ahead of the log (see [`Producer::ahead`]).
#[derive(Clone)]
pub struct GroupSealer {
    sealer: Sealer,
}

impl GroupSealer {
    /// Seal `events` in order on top of the previous group.
    pub fn seal(
        &mut self,
        events: Vec<EventToSeal>,
        now_ms: i64,
        policy: &dyn hru_envelope::AudiencePolicy,
        directory: &Directory,
        rng: &mut (impl rand_core::CryptoRng + rand_core::RngCore),
    ) -> Result<SealedGroup, StoreError> {
        let mut batches = Vec::with_capacity(events.len());
        for e in events {
            let batch = self
                .sealer
                .prepare_event_with_id(
                    e.event_id,
                    e.case_id,
                    e.event_type,
                    e.sections,
                    e.occurred_at_ms,
                    now_ms,
                    policy,
                    directory,
                    rng,
                )
                .map_err(|err| StoreError::Seal(err.to_string()))?;
            self.sealer.commit(&batch, batch.envelopes.len());
            batches.push(batch);
        }
        Ok(SealedGroup { batches })
    }
}

/// One event to seal in a group.
#[derive(Debug, Clone)]
pub struct EventToSeal {
    /// Its case.
    pub case_id: hru_domain::CaseId,
    /// Its type.
    pub event_type: EventType,
    /// Its sections.
    pub sections: Vec<hru_domain::PlainSection>,
    /// When it happened, Unix ms.
    pub occurred_at_ms: i64,
    /// Its id, when the caller derives it (so a decision taken again is the same event and the
    /// log keeps it once); none for a fresh one.
    pub event_id: Option<hru_domain::EventId>,
}

impl Producer {
    /// Open (or create) the store at `path` for `producer`, rebuild it from the log when it is
    /// new, and publish whatever its outbox still holds.
    pub async fn open(
        path: &Path,
        producer: ProducerId,
        signing: ed25519_dalek::SigningKey,
        log: &impl SharedLog,
        directory: &Directory,
    ) -> Result<Self, StoreError> {
        let name = path.display().to_string();
        let store_err = |e: sled::Error| StoreError::Store {
            path: name.clone(),
            reason: e.to_string(),
        };
        let private_dir = || {
            hru_envelope::create_private_dir(path).map_err(|e| StoreError::Store {
                path: name.clone(),
                reason: e.to_string(),
            })
        };
        private_dir()?;
        let db = match sled::open(path) {
            Ok(db) => db,
            // A store killed while sled was first writing it does not open. Everything the log
            // acknowledged is in the log: move the store aside and rebuild from there (what
            // its outbox held unacknowledged may be lost, as after any crash before the ack).
            Err(e @ sled::Error::Corruption { .. }) => {
                let aside = path.with_extension(format!("broken-{}", std::process::id()));
                tracing::error!(cause = %e, path = %name, aside = %aside.display(), "producer store does not open; rebuilding it from the log");
                std::fs::rename(path, &aside).map_err(|e| StoreError::Store {
                    path: name.clone(),
                    reason: format!("moving the damaged store aside: {e}"),
                })?;
                private_dir()?;
                sled::open(path).map_err(store_err)?
            }
            Err(e) => return Err(store_err(e)),
        };
        let state = db.open_tree("state").map_err(store_err)?;
        let outbox = db.open_tree("outbox").map_err(store_err)?;
        let damaged = |key: &str, reason: String| StoreError::Damaged {
            path: name.clone(),
            key: key.to_owned(),
            reason,
        };
        let wrap = WrapKeys::open(path).map_err(|e| damaged("wrap", e))?;
        let mut held = Vec::new();
        let sealer = match state.get(STATE_KEY).map_err(store_err)? {
            Some(bytes) => {
                let row: StateRow = serde_json::from_slice(&bytes).map_err(|e| damaged("state", e.to_string()))?;
                let head = parse_head(&row.head).map_err(|e| damaged("state", e))?;
                let epochs = row
                    .epochs
                    .iter()
                    .map(|r| parse_epoch(r, &wrap).map(|(a, e)| ((a, e.retention.clone()), e)))
                    .collect::<Result<BTreeMap<_, _>, _>>()
                    .map_err(|e| damaged("state", e))?;
                let mut sealer = Sealer::resume(producer, signing, head, epochs);
                for (audience, epoch) in &row.used {
                    let audience = AudienceId::parse(audience, "used").map_err(|e| damaged("state", e.to_string()))?;
                    sealer.note_used_epoch(audience, *epoch);
                }
                held = row
                    .held
                    .iter()
                    .map(|r| parse_held(r, &wrap))
                    .collect::<Result<_, _>>()
                    .map_err(|e| damaged("state", e))?;
                sealer
            }
            None => recover(producer, signing, log, directory).await?,
        };
        let mut me = Self {
            sealer,
            held,
            wrap,
            db,
            state,
            outbox,
            path: name,
        };
        me.save_state()?;
        me.publish_outbox(log, true).await?;
        // Whatever an interrupted destruction left readable in the store's history goes now.
        me.rewrap()?;
        Ok(me)
    }

    /// The sealer, for preparing the next batch.
    pub fn sealer(&self) -> &Sealer {
        &self.sealer
    }

    fn store_err(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Store {
            path: self.path.clone(),
            reason: e.to_string(),
        }
    }

    fn save_state(&self) -> Result<(), StoreError> {
        let bytes = self.state_bytes()?;
        self.state.insert(STATE_KEY, bytes).map_err(|e| self.store_err(e))?;
        self.db.flush().map_err(|e| self.store_err(e))?;
        Ok(())
    }

    /// The producer's state as stored: chain head, kept epochs, numbers of destroyed ones.
    fn state_bytes(&self) -> Result<Vec<u8>, StoreError> {
        let row = StateRow {
            head: head_row(self.sealer.chain()),
            epochs: self
                .sealer
                .epochs()
                .iter()
                .map(|((a, _), e)| epoch_row(a, e, &self.wrap))
                .collect(),
            used: self
                .sealer
                .used_epochs()
                .iter()
                .map(|(a, n)| (a.to_string(), *n))
                .collect(),
            held: self.held.iter().map(|h| held_row(h, &self.wrap)).collect(),
        };
        serde_json::to_vec(&row).map_err(|e| self.store_err(e))
    }

    /// Destroy this producer's copies of the epoch keys whose retention has ended by `at_ms`:
    /// for each, a signed `EpochKeyDestroyed` goes on the log first (sealed at `now_ms`, the
    /// real time), then the key leaves the producer's state. A crash between the two announces
    /// it again on the next run; nothing is destroyed unannounced. Before an epoch is destroyed,
    /// the section keys of this producer's events under it in each case under a standing legal
    /// hold its own party placed are kept (wrapped in the store); kept keys are granted to the
    /// epoch's members under a hold key for the month of `now_ms` unless already granted for
    /// it, and dropped once their hold is released (decision 010). `directory` is the
    /// deployment's; the members' published period keys are read from the log. A hold's grant
    /// that fails is logged and tried again on the next sweep; it never stops destruction.
    /// Returns (audience, epoch) destroyed.
    pub async fn destroy_expired(
        &mut self,
        log: &impl SharedLog,
        at_ms: i64,
        now_ms: i64,
        policy: &(dyn hru_envelope::AudiencePolicy + Sync),
        directory: &Directory,
    ) -> Result<Vec<(AudienceId, u32)>, StoreError> {
        self.flush_outbox(log).await?;
        let expired = self.sealer.expired(at_ms);
        let party = self.sealer.producer().party.clone();
        // Only holds this producer's own party placed: each agency decides for its own data.
        let holds: Vec<crate::holds::Hold> = if expired.is_empty() && self.held.is_empty() {
            Vec::new()
        } else {
            crate::holds::read(log.reader(), directory)
                .await?
                .into_iter()
                .filter(|h| h.placed_by == party)
                .collect()
        };
        let mut destroyed = Vec::new();
        for slot in expired {
            let Some(state) = self.sealer.epochs().get(&slot).cloned() else {
                continue;
            };
            self.keep_held(log, &slot.0, &state, &holds, directory).await?;
            let body = hru_wire::v1::EpochKeyDestroyed {
                producer: self.sealer.producer().party.to_string(),
                audience: slot.0.to_string(),
                epoch: state.epoch,
                instance: self.sealer.producer().instance.clone(),
            };
            let batch = self
                .sealer
                .prepare_public(
                    EventType::EpochKeyDestroyed,
                    prost::Message::encode_to_vec(&body),
                    now_ms,
                    policy,
                )
                .map_err(|e| StoreError::Seal(e.to_string()))?;
            self.append(log, &batch, Expect::Any).await?;
            if let Some(epoch) = self.sealer.forget(&slot) {
                self.save_state()?;
                destroyed.push((slot.0, epoch));
            }
        }
        let released = self.grant_held(log, &holds, now_ms, policy, directory).await?;
        if !destroyed.is_empty() || released {
            self.rewrap()?;
        }
        Ok(destroyed)
    }

    /// Keep the section keys of this producer's events under `audience`'s epoch `state` in each
    /// case under a standing hold, saved before the epoch key is destroyed.
    async fn keep_held(
        &mut self,
        log: &impl SharedLog,
        audience: &AudienceId,
        state: &EpochState,
        holds: &[crate::holds::Hold],
        directory: &Directory,
    ) -> Result<(), StoreError> {
        let mut changed = false;
        for hold in holds.iter().filter(|h| h.stands()) {
            let kept = self
                .held
                .iter()
                .any(|h| h.hold == hold.id && h.audience == *audience && h.epoch == state.epoch);
            if kept {
                continue;
            }
            let mut keys = Vec::new();
            let mut events = log.reader().replay(1, &[Filter::case_events(hold.case)]).await?;
            while let Some(e) = events.try_next().await? {
                if let Ok(v) = verify(&e.payload, directory) {
                    keys.extend(self.sealer.held_keys(audience, state, &v));
                }
            }
            if keys.is_empty() {
                continue;
            }
            tracing::info!(hold = %hold.id, case = %hold.case, %audience, epoch = state.epoch, sections = keys.len(), "section keys kept under a legal hold");
            self.held.push(HeldEpochKeys {
                hold: hold.id.clone(),
                case: hold.case.to_string(),
                audience: audience.clone(),
                epoch: state.epoch,
                epoch_retention: state.retention.clone(),
                epoch_month: state.month.clone(),
                members: state.members.iter().map(|(p, _)| p.clone()).collect(),
                granted: None,
                keys,
            });
            changed = true;
        }
        if changed {
            self.save_state()?;
        }
        Ok(())
    }

    /// Drop the kept section keys of released holds; grant the others for the month of
    /// `now_ms` where not yet granted for it. Whether any were dropped.
    async fn grant_held(
        &mut self,
        log: &impl SharedLog,
        holds: &[crate::holds::Hold],
        now_ms: i64,
        policy: &(dyn hru_envelope::AudiencePolicy + Sync),
        directory: &Directory,
    ) -> Result<bool, StoreError> {
        if self.held.is_empty() {
            return Ok(false);
        }
        let before = self.held.len();
        self.held
            .retain(|h| holds.iter().any(|hold| hold.id == h.hold && hold.stands()));
        let released = self.held.len() < before;
        if released {
            tracing::info!(
                dropped = before - self.held.len(),
                "section keys of released legal holds destroyed"
            );
            self.save_state()?;
        }
        let month =
            hru_envelope::month_at(now_ms).ok_or_else(|| StoreError::Seal(format!("{now_ms} ms is no month")))?;
        if self.held.iter().all(|h| h.granted.as_deref() == Some(month.as_str())) {
            return Ok(released);
        }
        let sealing = crate::periods::directory_with_periods(log.reader(), directory).await?;
        for i in 0..self.held.len() {
            if self.held[i].granted.as_deref() == Some(month.as_str()) {
                continue;
            }
            let h = &self.held[i];
            let held = hru_envelope::HeldEpoch {
                hold: &h.hold,
                case: &h.case,
                audience: &h.audience,
                epoch: h.epoch,
                epoch_retention: &h.epoch_retention,
                epoch_month: &h.epoch_month,
                members: &h.members,
            };
            let (batch, left_out) = match self.sealer.prepare_held(
                &held,
                &h.keys,
                &sealing,
                now_ms,
                policy,
                &mut rand_core::OsRng,
            ) {
                Ok(sealed) => sealed,
                Err(e) => {
                    tracing::warn!(hold = %h.hold, audience = %h.audience, epoch = h.epoch, cause = %e, "a legal hold's keys not granted this month; trying again on the next sweep");
                    continue;
                }
            };
            if !left_out.is_empty() {
                let names: Vec<String> = left_out.iter().map(ToString::to_string).collect();
                tracing::warn!(hold = %h.hold, left_out = %names.join(", "), %month, "members with no one-month period key left out of a legal hold's grant");
            }
            self.append(log, &batch, Expect::Any).await?;
            self.held[i].granted = Some(month.clone());
            self.save_state()?;
        }
        Ok(released)
    }

    /// A new wrapping key: the kept epochs rewrapped under it, then the old key gone from the
    /// wrap file, so no copy the store's history keeps of a destroyed epoch key opens. Waits
    /// (does nothing) while the outbox holds rows wrapped under the current key.
    fn rewrap(&mut self) -> Result<(), StoreError> {
        if !self.outbox.is_empty() {
            return Ok(());
        }
        let wrap_err = |e: String| StoreError::Store {
            path: self.wrap.path.display().to_string(),
            reason: e,
        };
        let next = (self.wrap.current.0 + 1, fresh_key());
        self.wrap.previous = Some(self.wrap.current);
        self.wrap.current = next;
        self.wrap.write().map_err(wrap_err)?;
        self.save_state()?;
        self.wrap.previous = None;
        self.wrap.write().map_err(|e| StoreError::Store {
            path: self.wrap.path.display().to_string(),
            reason: e,
        })
    }

    /// Write `batch` to the outbox, publish it, and advance the chain as the log acknowledges
    /// each envelope. Returns the acknowledged envelopes' stream sequences.
    pub async fn append(
        &mut self,
        log: &impl SharedLog,
        batch: &SealedBatch,
        expect: Expect,
    ) -> Result<Vec<u64>, StoreError> {
        self.flush_outbox(log).await?;
        for (i, env) in batch.envelopes.iter().enumerate() {
            let (head_after, epoch) = batch.effect(i);
            let row = OutboxRow {
                subject: env.subject.to_string(),
                expect: match (env.header.case_id, expect) {
                    (Some(_), Expect::CaseAt(n)) => Some(n),
                    _ => None,
                },
                bytes: env.bytes.clone(),
                head_after,
                epoch: epoch.map(|(a, e)| epoch_row(a, e, &self.wrap)),
            };
            let bytes = row.encode();
            self.outbox
                .insert(env.header.producer_seq.to_be_bytes(), bytes)
                .map_err(|e| self.store_err(e))?;
        }
        self.db.flush().map_err(|e| self.store_err(e))?;
        self.flush_outbox(log).await
    }

    /// A sealer for groups ahead of the log, starting at the acknowledged head. It is plain
    /// data: seal the next group on another thread while this producer publishes the current one.
    pub fn ahead(&self) -> GroupSealer {
        GroupSealer {
            sealer: self.sealer.clone(),
        }
    }

    /// Seal many events and append them as one group: one outbox write, one publish group (an
    /// atomic batch when the stream offers it, else pipelined publishes) and one state commit:
    /// the group commit that keeps "acknowledged means on disk" affordable. No case condition
    /// applies; events that need one go through [`Producer::append`].
    #[allow(clippy::too_many_arguments)]
    pub async fn append_many(
        &mut self,
        log: &impl SharedLog,
        events: Vec<EventToSeal>,
        now_ms: i64,
        policy: &(dyn hru_envelope::AudiencePolicy + Sync),
        directory: &Directory,
        rng: &mut (impl rand_core::CryptoRng + rand_core::RngCore),
        atomic: bool,
    ) -> Result<Vec<u64>, StoreError> {
        self.flush_outbox(log).await?;
        let group = self.ahead().seal(events, now_ms, policy, directory, rng)?;
        self.publish_group(log, &group, atomic).await
    }

    /// Publish a group sealed by [`Producer::ahead`]: outbox, publish, one commit. The group
    /// must start at the acknowledged head (seal groups in order; after a failure, take a new
    /// [`Producer::ahead`]). An event whose id another producer may also derive (a decision
    /// two instances can both take) goes through [`Producer::append`], which leaves the chain
    /// where it is when the log holds the other producer's copy; in a group the envelopes after
    /// it would link to a copy the log never stored.
    pub async fn publish_group(
        &mut self,
        log: &impl SharedLog,
        group: &SealedGroup,
        atomic: bool,
    ) -> Result<Vec<u64>, StoreError> {
        self.flush_outbox(log).await?;
        let batches = &group.batches;
        let starts_at = batches
            .first()
            .and_then(|b| b.envelopes.first())
            .map(|e| e.header.producer_seq);
        if starts_at.is_some_and(|s| s != self.sealer.chain().next_seq) {
            return Err(StoreError::Seal(format!(
                "the group starts at seq {}, but the producer stands at {}; seal from a fresh ahead()",
                starts_at.unwrap_or_default(),
                self.sealer.chain().next_seq
            )));
        }
        let mut outbox = sled::Batch::default();
        let mut effects = Vec::new();
        let mut envelopes = Vec::new();
        let mut keys = Vec::new();
        for batch in batches {
            for (i, env) in batch.envelopes.iter().enumerate() {
                let (head_after, epoch) = batch.effect(i);
                let row = OutboxRow {
                    subject: env.subject.to_string(),
                    expect: None,
                    bytes: env.bytes.clone(),
                    head_after,
                    epoch: epoch.map(|(a, e)| epoch_row(a, e, &self.wrap)),
                };
                let key = env.header.producer_seq.to_be_bytes();
                outbox.insert(&key, row.encode());
                keys.push(key);
                effects.push((head_after, epoch.map(|(a, e)| (a.clone(), e.clone()))));
                envelopes.push(env);
            }
        }
        self.outbox.apply_batch(outbox).map_err(|e| self.store_err(e))?;
        self.db.flush_async().await.map_err(|e| self.store_err(e))?;

        let (sequences, failure) = if atomic {
            let mut sequences = Vec::with_capacity(envelopes.len());
            let mut failure = None;
            for chunk in envelopes.chunks(ATOMIC_CHUNK) {
                match log.appender().append_atomic(chunk).await {
                    Ok(s) => sequences.extend(s),
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            (sequences, failure)
        } else {
            let (acks, failure) = log.appender().append_pipelined(&envelopes).await;
            (acks.iter().map(|a| a.sequence).collect(), failure)
        };

        // One commit for the acknowledged prefix.
        let acked = sequences.len();
        for (head_after, epoch) in effects.into_iter().take(acked) {
            self.sealer.apply(head_after, epoch);
        }
        let state_bytes = self.state_bytes()?;
        let mut remove = sled::Batch::default();
        for key in keys.iter().take(acked) {
            remove.remove(key);
        }
        let mut put = sled::Batch::default();
        put.insert(STATE_KEY, state_bytes);
        (&self.state, &self.outbox)
            .transaction(|(s, o)| {
                s.apply_batch(&put)?;
                o.apply_batch(&remove)?;
                Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e| self.store_err(format!("{e:?}")))?;
        // No flush here: the log holds these envelopes now, and a restart that finds them still
        // in the outbox recognises them in the log by id.
        if let Some(e) = failure {
            tracing::warn!(cause = %e, acked, "group publish incomplete; publishing the rest one by one");
            let rest = self.publish_outbox(log, true).await?;
            return Ok(sequences.into_iter().chain(rest).collect());
        }
        Ok(sequences)
    }

    /// Publish every outbox entry in order; each acknowledged one advances the chain and leaves
    /// the outbox in one flushed step. A conflict drops the rest of the outbox (they were
    /// sealed on top of the refused envelope and were never acknowledged to anyone).
    pub async fn flush_outbox(&mut self, log: &impl SharedLog) -> Result<Vec<u64>, StoreError> {
        self.publish_outbox(log, false).await
    }

    /// As [`Producer::flush_outbox`]; `recovering` first looks each envelope up in the log, since
    /// a crash may have come after the broker stored it but before the outbox forgot it, and
    /// the broker's duplicate window may have passed since.
    async fn publish_outbox(&mut self, log: &impl SharedLog, recovering: bool) -> Result<Vec<u64>, StoreError> {
        let mut acked = Vec::new();
        while let Some((key, value)) = self.outbox.first().map_err(|e| self.store_err(e))? {
            let key_text = hex::encode(&key);
            let damaged = |reason: String| StoreError::Damaged {
                path: self.path.clone(),
                key: key_text.clone(),
                reason,
            };
            let row = OutboxRow::decode(&value).map_err(damaged)?;
            let bytes = row.bytes.clone();
            let header = hru_envelope::decode_header(&bytes).map_err(|e| damaged(e.to_string()))?;
            let head_after = row.head_after;
            let epoch = row
                .epoch
                .as_ref()
                .map(|r| parse_epoch(r, &self.wrap))
                .transpose()
                .map_err(damaged)?;
            if header.producer_seq != self.sealer.chain().next_seq {
                // Sealed on a chain position that has moved on: it can never land.
                self.outbox.remove(&key).map_err(|e| self.store_err(e))?;
                continue;
            }
            let envelope = SealedEnvelope {
                subject: Subject::from_wire(row.subject.as_str()),
                digest: head_after.prev_digest,
                header,
                bytes,
            };
            let expect = row.expect.map_or(Expect::Any, Expect::CaseAt);
            let already = if recovering {
                // Asked of HRU_EVENTS itself; only when it cannot tell (another writer of the
                // party on the same subject since), of everything this handle reads.
                let stored = match log.appender().stored_after(&envelope, row.expect.unwrap_or(0)).await {
                    Ok(stored) => stored,
                    Err(cause) => {
                        tracing::debug!(%cause, "looking the envelope up by id instead");
                        log.reader()
                            .find_message_id(&envelope.subject, &envelope.header.event_id.to_string())
                            .await?
                    }
                };
                stored.map(|sequence| crate::Ack {
                    sequence,
                    duplicate: true,
                })
            } else {
                None
            };
            let result = match already {
                Some(ack) => Ok(ack),
                None => log.appender().append_expecting(&envelope, expect).await,
            };
            let result = match result {
                // A duplicate says only that a message with this id is stored: another producer
                // of the party may have appended the same decision (its id derives from the
                // decision). Then this envelope was never stored, and the chain stays where it is.
                Ok(ack) if ack.duplicate && !holds_ours(log, &envelope, ack.sequence).await? => {
                    tracing::info!(
                        event = %envelope.header.event_id,
                        sequence = ack.sequence,
                        producer_seq = envelope.header.producer_seq,
                        "the log holds this event from another producer; this copy is dropped and the chain stays"
                    );
                    self.outbox.remove(&key).map_err(|e| self.store_err(e))?;
                    self.db.flush().map_err(|e| self.store_err(e))?;
                    acked.push(ack.sequence);
                    continue;
                }
                other => other,
            };
            match result {
                Ok(ack) => {
                    self.sealer.apply(head_after, epoch);
                    let state_bytes = self.state_bytes()?;
                    let mut batch_state = sled::Batch::default();
                    batch_state.insert(STATE_KEY, state_bytes);
                    let mut batch_outbox = sled::Batch::default();
                    batch_outbox.remove(key.clone());
                    (&self.state, &self.outbox)
                        .transaction(|(s, o)| {
                            s.apply_batch(&batch_state)?;
                            o.apply_batch(&batch_outbox)?;
                            Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
                        })
                        .map_err(|e| self.store_err(format!("{e:?}")))?;
                    self.db.flush().map_err(|e| self.store_err(e))?;
                    acked.push(ack.sequence);
                }
                Err(e @ (AppendError::Conflict { .. } | AppendError::Refused { .. })) => {
                    self.outbox.clear().map_err(|e| self.store_err(e))?;
                    self.db.flush().map_err(|e| self.store_err(e))?;
                    return Err(e.into());
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(acked)
    }
}

use sled::Transactional as _;

/// Rebuild a producer from its own envelopes in the log: the chain head after its last
/// envelope, and the epoch numbers it used (their keys are gone, so new epochs are granted).
async fn recover(
    producer: ProducerId,
    signing: ed25519_dalek::SigningKey,
    log: &impl SharedLog,
    directory: &Directory,
) -> Result<Sealer, StoreError> {
    let party = &producer.party;
    let filters = [
        Filter::producer_events(party),
        Filter::producer_key_grants(party),
        Filter::producer_control(party),
        Filter::producer_access(party),
    ];
    let mut chain = ChainHead::GENESIS;
    let mut used = Vec::new();
    let mut entries = log.reader().replay(1, &filters).await?;
    while let Some(entry) = entries.try_next().await? {
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
            && let Ok(grant) = <hru_wire::v1::KeyGranted as prost::Message>::decode(v.body.as_slice())
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

/// How long a duplicate's owner is looked for in a reader that lags the log (a party's view).
const OWNER_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Whether the message `log` holds at `sequence` is `envelope` itself (byte for byte) rather
/// than another producer's envelope under the same event id. A reader that does not hold the
/// sequence after [`OWNER_WAIT`] cannot tell: an error, and the envelope stays in the outbox
/// (assuming either way could break the chain).
async fn holds_ours(log: &impl SharedLog, envelope: &SealedEnvelope, sequence: u64) -> Result<bool, StoreError> {
    let filter = [Filter::exactly(&envelope.subject)];
    let deadline = tokio::time::Instant::now() + OWNER_WAIT;
    loop {
        let mut entries = log.reader().replay(sequence, &filter).await?;
        while let Some(e) = entries.try_next().await? {
            if e.sequence == sequence {
                return Ok(e.payload.as_ref() == envelope.bytes.as_slice());
            }
            if e.sequence > sequence {
                break;
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(LogError::Request {
                operation: "tell whose copy of a duplicate the log holds",
                source: format!(
                    "event {} is stored at {sequence}, which this reader has not held within {OWNER_WAIT:?}; the envelope stays in the outbox",
                    envelope.header.event_id
                )
                .into(),
            }
            .into());
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
