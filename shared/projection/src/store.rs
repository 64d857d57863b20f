//! The projection store: sled trees per projection, a checkpoint per projection committed
//! atomically with its writes, version-triggered rebuilds and digests.

use std::collections::BTreeMap;
use std::path::Path;

use hru_domain::{CaseEvent, EventHeader, EventType, FieldError, join_sections};
use hru_envelope::OpenedEvent;
use hru_reader::{Incoming, Read, ReadPath, Refusal};
use sha2::{Digest as _, Sha256};
use sled::Transactional as _;

/// One event as a projection sees it: its stream sequence, header and the sections the party
/// could open (absent sections are `None`).
#[derive(Debug, Clone)]
pub struct Applied<'a> {
    /// Stream sequence.
    pub sequence: u64,
    /// The verified header.
    pub header: &'a EventHeader,
    /// The typed event.
    pub event: &'a CaseEvent,
}

/// A write a projection asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Set a key.
    Put(Vec<u8>, Vec<u8>),
    /// Remove a key.
    Delete(Vec<u8>),
}

/// Read access to a projection's state (including writes earlier in the same batch).
pub trait Reader {
    /// The value at `key`.
    fn get(&self, key: &[u8]) -> Option<Vec<u8>>;
}

/// The JSON value a projection keeps at `key`, if any.
pub fn read_json<T: serde::de::DeserializeOwned>(state: &dyn Reader, key: &[u8]) -> Option<T> {
    state.get(key).and_then(|v| serde_json::from_slice(&v).ok())
}

/// Put `value` as JSON at `key`.
pub fn put_json<T: serde::Serialize>(key: Vec<u8>, value: &T) -> Write {
    Write::Put(key, serde_json::to_vec(value).unwrap_or_default())
}

/// A named, versioned fold; bump the version to rebuild it on start.
pub trait Projection: Send + Sync {
    /// Name (also its sled tree).
    fn name(&self) -> &'static str;
    /// Version of the fold.
    fn version(&self) -> u32;
    /// The writes one event causes, given the state so far.
    fn apply(&self, state: &dyn Reader, event: &Applied<'_>) -> Vec<Write>;
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// sled failed.
    #[error("projection store: {0}")]
    Store(String),
}

fn err(e: impl std::fmt::Display) -> ProjectionError {
    ProjectionError::Store(e.to_string())
}

/// Projection state in sled: one tree per projection, a meta tree of checkpoints, and the key
/// grants and key events read so far (grants still sealed to the party, so no epoch key is
/// ever stored in the clear).
pub struct Store {
    db: sled::Db,
    meta: sled::Tree,
    grants: sled::Tree,
}

/// Meta key of the read path version the store was folded through.
const READ_PATH_KEY: &str = "__read_path";

/// The read path this build folds through: a store folded by another is rebuilt.
pub const READ_PATH_VERSION: u32 = 1;

/// Tree of the kept KeyGranted, KeyRotated and KeyRevoked envelopes (sequence → envelope
/// bytes) and its meta key.
const GRANTS: &str = "__grants";
/// Meta key: the time (Unix ms, big-endian i64) through which the projections have forgotten
/// what expired under retention.
const FORGOTTEN_KEY: &str = "__forgotten_through";
/// Meta key: the last log sequence of a legal hold's grant the projections were folded with.
const HOLDS_KEY: &str = "__holds_folded";

/// A key and its value.
pub type Entry = (Vec<u8>, Vec<u8>);

/// The meta value of a projection: its version and the last sequence applied.
fn meta_value(version: u32, sequence: u64) -> Vec<u8> {
    let mut v = version.to_be_bytes().to_vec();
    v.extend_from_slice(&sequence.to_be_bytes());
    v
}

fn parse_meta(v: &[u8]) -> Option<(u32, u64)> {
    let version = u32::from_be_bytes(v.get(..4)?.try_into().ok()?);
    let sequence = u64::from_be_bytes(v.get(4..12)?.try_into().ok()?);
    Some((version, sequence))
}

struct Overlay<'a> {
    tree: &'a sled::Tree,
    pending: &'a BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl Reader for Overlay<'_> {
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        match self.pending.get(key) {
            Some(v) => v.clone(),
            None => self.tree.get(key).ok().flatten().map(|v| v.to_vec()),
        }
    }
}

/// Open sled at `path`, waiting up to ten seconds for a previous holder of its file lock (a
/// store just dropped in this process, whose flusher thread is still finishing: on a saturated
/// machine that has taken more than two) to let go.
fn open_when_released(path: &Path) -> sled::Result<sled::Db> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match sled::open(path) {
            Err(sled::Error::Io(e))
                if e.kind() == std::io::ErrorKind::WouldBlock && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

impl Store {
    /// Open the store at `path`. A corrupt store is not trusted: it is moved aside
    /// and a fresh one is rebuilt from the log.
    pub fn open(path: &Path) -> Result<Self, ProjectionError> {
        hru_envelope::create_private_dir(path).map_err(err)?;
        let db = match open_when_released(path) {
            Ok(db) => db,
            Err(e @ sled::Error::Corruption { .. }) => {
                tracing::error!(cause = %e, path = %path.display(), "projection store does not open; rebuilding from the log");
                let aside = path.with_extension(format!("broken-{}", std::process::id()));
                std::fs::rename(path, &aside).map_err(err)?;
                hru_envelope::create_private_dir(path).map_err(err)?;
                sled::open(path).map_err(err)?
            }
            Err(e) => return Err(err(e)),
        };
        let meta = db.open_tree("__meta").map_err(err)?;
        let grants = db.open_tree(GRANTS).map_err(err)?;
        Ok(Self { db, meta, grants })
    }

    /// The key grants kept so far, in log order, and the last sequence they cover.
    pub fn grants(&self) -> Result<(Vec<Entry>, u64), ProjectionError> {
        let through = self
            .meta
            .get(GRANTS)
            .map_err(err)?
            .and_then(|v| parse_meta(&v))
            .map_or(0, |(_, seq)| seq);
        let kept = self
            .grants
            .iter()
            .map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(err))
            .collect::<Result<_, _>>()?;
        Ok((kept, through))
    }

    /// Keep `grants` (sequence, envelope bytes) and mark the log read through `through`, in one
    /// transaction.
    pub fn keep_grants(&self, grants: &[(u64, &[u8])], through: u64) -> Result<(), ProjectionError> {
        let checkpoint = meta_value(0, through);
        (&self.grants, &self.meta)
            .transaction(|(g, m)| {
                for (sequence, bytes) in grants {
                    g.insert(&sequence.to_be_bytes(), *bytes)?;
                }
                m.insert(GRANTS, checkpoint.as_slice())?;
                Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e| err(format!("{e:?}")))
    }

    /// Wipe every projection in `projections` and the kept grants unless the store was folded
    /// through read path `version`: what an older reader folded (before its checks existed) is
    /// not trusted, and key events it did not keep are read again.
    pub fn require_read_path(&self, version: u32, projections: &[Box<dyn Projection>]) -> Result<(), ProjectionError> {
        let current = self.meta.get(READ_PATH_KEY).map_err(err)?.and_then(|v| parse_meta(&v));
        if current.is_some_and(|(v, _)| v == version) {
            return Ok(());
        }
        if self.meta.iter().next().is_some() {
            tracing::info!(
                read_path = version,
                "folded by an older read path; rebuilding every projection"
            );
        }
        for p in projections {
            self.wipe(p.as_ref())?;
        }
        self.grants.clear().map_err(err)?;
        self.meta.remove(GRANTS).map_err(err)?;
        self.meta.insert(READ_PATH_KEY, meta_value(version, 0)).map_err(err)?;
        self.db.flush().map_err(err)?;
        Ok(())
    }

    /// The last sequence applied to `projection` (0: none), after wiping it if its version
    /// changed.
    pub fn prepare(&self, projection: &dyn Projection) -> Result<u64, ProjectionError> {
        match self
            .meta
            .get(projection.name())
            .map_err(err)?
            .and_then(|v| parse_meta(&v))
        {
            Some((v, seq)) if v == projection.version() => Ok(seq),
            found => {
                if found.is_some() {
                    tracing::info!(projection = projection.name(), "version changed; rebuilding");
                }
                self.wipe(projection)?;
                Ok(0)
            }
        }
    }

    /// Remove a projection's state and checkpoint. The checkpoint goes first (made durable),
    /// so a crash between the two leaves a projection that is folded again from the start,
    /// never rows without the events that made them.
    pub fn wipe(&self, projection: &dyn Projection) -> Result<(), ProjectionError> {
        self.meta
            .insert(projection.name(), meta_value(projection.version(), 0))
            .map_err(err)?;
        self.db.flush().map_err(err)?;
        self.db
            .open_tree(projection.name())
            .map_err(err)?
            .clear()
            .map_err(err)?;
        self.db.flush().map_err(err)?;
        Ok(())
    }

    /// The time through which the projections have forgotten what expired (None: never swept).
    pub fn forgotten_through(&self) -> Result<Option<i64>, ProjectionError> {
        Ok(self
            .meta
            .get(FORGOTTEN_KEY)
            .map_err(err)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map(i64::from_be_bytes))
    }

    /// The last log sequence of a legal hold's grant taken in before the projections were
    /// folded (0: none).
    pub fn holds_folded(&self) -> Result<u64, ProjectionError> {
        Ok(self
            .meta
            .get(HOLDS_KEY)
            .map_err(err)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map_or(0, u64::from_be_bytes))
    }

    /// Record that the projections are folded with every hold's grant through `sequence`.
    pub fn set_holds_folded(&self, sequence: u64) -> Result<(), ProjectionError> {
        self.meta
            .insert(HOLDS_KEY, sequence.to_be_bytes().as_slice())
            .map_err(err)?;
        self.db.flush().map_err(err)?;
        Ok(())
    }

    /// Record that the projections have forgotten what expired by `at_ms` (made durable).
    pub fn set_forgotten_through(&self, at_ms: i64) -> Result<(), ProjectionError> {
        self.meta
            .insert(FORGOTTEN_KEY, at_ms.to_be_bytes().as_slice())
            .map_err(err)?;
        self.db.flush().map_err(err)?;
        Ok(())
    }

    /// Fold `events` (in log order, all after the checkpoint) and commit the writes with the
    /// new checkpoint in one transaction.
    pub fn apply(
        &self,
        projection: &dyn Projection,
        events: &[Applied<'_>],
        through: u64,
    ) -> Result<(), ProjectionError> {
        let tree = self.db.open_tree(projection.name()).map_err(err)?;
        let mut pending: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
        for event in events {
            let writes = projection.apply(
                &Overlay {
                    tree: &tree,
                    pending: &pending,
                },
                event,
            );
            for w in writes {
                match w {
                    Write::Put(k, v) => pending.insert(k, Some(v)),
                    Write::Delete(k) => pending.insert(k, None),
                };
            }
        }
        let mut batch = sled::Batch::default();
        for (k, v) in &pending {
            match v {
                Some(v) => batch.insert(k.as_slice(), v.as_slice()),
                None => batch.remove(k.as_slice()),
            }
        }
        let checkpoint = meta_value(projection.version(), through);
        (&tree, &self.meta)
            .transaction(|(t, m)| {
                t.apply_batch(&batch)?;
                m.insert(projection.name(), checkpoint.as_slice())?;
                Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e| err(format!("{e:?}")))?;
        Ok(())
    }

    /// Make every committed batch durable.
    pub fn flush(&self) -> Result<(), ProjectionError> {
        self.db.flush().map(|_| ()).map_err(err)
    }

    /// SHA-256 over every key and value of a projection, in key order.
    pub fn digest(&self, projection: &dyn Projection) -> Result<[u8; 32], ProjectionError> {
        let tree = self.db.open_tree(projection.name()).map_err(err)?;
        let mut h = Sha256::new();
        for kv in tree.iter() {
            let (k, v) = kv.map_err(err)?;
            h.update((k.len() as u64).to_be_bytes());
            h.update(&k);
            h.update((v.len() as u64).to_be_bytes());
            h.update(&v);
        }
        Ok(h.finalize().into())
    }

    /// Every key and value of a projection with the given key prefix.
    pub fn scan(&self, projection: &dyn Projection, prefix: &[u8]) -> Result<Vec<Entry>, ProjectionError> {
        let tree = self.db.open_tree(projection.name()).map_err(err)?;
        tree.scan_prefix(prefix)
            .map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(err))
            .collect()
    }
}

/// Turn what a party opened of an event into its typed form (sections it could not open are
/// `None`); `None` for public events.
pub fn open_typed(opened: &OpenedEvent) -> Option<Result<CaseEvent, FieldError>> {
    if !opened.header.event_type.has_case() {
        return None;
    }
    let readable: Vec<(&str, &[u8])> = opened
        .sections
        .iter()
        .filter_map(|s| s.plaintext.as_ref().ok().map(|p| (s.name.as_str(), p.as_slice())))
        .collect();
    Some(join_sections(opened.header.event_type, &readable).and_then(CaseEvent::try_from))
}

/// Feeds log entries through the read path and every projection.
pub struct Projector {
    /// The store.
    pub store: Store,
    projections: Vec<Box<dyn Projection>>,
    checkpoints: Vec<u64>,
    /// The last sequence whose key grants and key events are kept in the store.
    grants_through: u64,
    read: ReadPath,
    /// A legal hold's grant gave section keys after the events they open were folded: the
    /// projections must be folded again (as when they forget).
    held_unfolded: bool,
}

/// One log entry to fold: its sequence, the subject it arrived on, its bytes.
pub type LogItem<'a> = (u64, &'a str, &'a [u8], hru_reader::StoredAt);

impl Projector {
    /// A projector for `projections` over `store`, reading through `read`, which takes in the
    /// grants and key events the store kept (so reading resumes after the checkpoint, not from
    /// the start of the log).
    pub fn new(
        store: Store,
        projections: Vec<Box<dyn Projection>>,
        mut read: ReadPath,
    ) -> Result<Self, ProjectionError> {
        store.require_read_path(READ_PATH_VERSION, &projections)?;
        let checkpoints = projections
            .iter()
            .map(|p| store.prepare(p.as_ref()))
            .collect::<Result<_, _>>()?;
        let (kept, grants_through) = store.grants()?;
        for (key, bytes) in &kept {
            let sequence = key.as_slice().try_into().map(u64::from_be_bytes).unwrap_or(0);
            if let Err(e) = read.restore(sequence, bytes) {
                tracing::warn!(cause = %e, "kept envelope refused");
            }
        }
        Ok(Self {
            store,
            projections,
            checkpoints,
            grants_through,
            read,
            held_unfolded: false,
        })
    }

    /// Take in legal holds' grants (`entries`, read from the log ahead of the fold: they follow
    /// the events they open) before folding a new store; recorded as folded with.
    pub fn take_holds_ahead(&mut self, entries: &[LogItem<'_>]) -> Result<(), ProjectionError> {
        let mut through = self.store.holds_folded()?;
        for &(sequence, subject, bytes, stored) in entries {
            // A refused grant opens nothing: folding again for it would change nothing.
            through = through.max(sequence);
            if let Err(refusal) = self.read.read(&Incoming::logged(sequence, subject, bytes, stored)) {
                tracing::warn!(%refusal, "a legal hold's grant refused");
            }
        }
        self.store.set_holds_folded(through)
    }

    /// Whether the log holds a legal hold's grant (`latest`: the last one's sequence) after
    /// those the projections were folded with: they must be folded again to show what it opens.
    pub fn holds_due(&self, latest: Option<u64>) -> Result<bool, ProjectionError> {
        Ok(self.held_unfolded || latest.is_some_and(|l| l > 0) && latest > Some(self.store.holds_folded()?))
    }

    /// The lowest checkpoint: where the log must be read from (plus one).
    pub fn resume_from(&self) -> u64 {
        self.checkpoints
            .iter()
            .copied()
            .chain([self.grants_through])
            .min()
            .unwrap_or(0)
            + 1
    }

    /// Forget what expired under retention by `now_ms` (decision 010): the key ring destroys
    /// the expired epoch keys and opens them no more, and when an epoch the projections may
    /// have folded expired since the last sweep, every projection is wiped and folded again
    /// from the start, so no row or field derived from an erased section remains (a rebuild
    /// gives the same digest). Whether the projections were wiped: the caller folds the log
    /// again from [`Projector::resume_from`].
    pub fn forget_expired(&mut self, now_ms: i64) -> Result<bool, ProjectionError> {
        self.read.ring_mut().destroy_expired(now_ms);
        let since = self.store.forgotten_through()?.unwrap_or(i64::MIN);
        let due = self.forgetting_due(now_ms)?;
        if due {
            for (i, projection) in self.projections.iter().enumerate() {
                self.store.wipe(projection.as_ref())?;
                self.checkpoints[i] = 0;
            }
        }
        self.store.set_forgotten_through(now_ms.max(since))?;
        Ok(due)
    }

    /// Whether an epoch the projections may have folded has expired since they last forgot
    /// (what [`Projector::forget_expired`] would wipe them for), without changing anything.
    pub fn forgetting_due(&self, now_ms: i64) -> Result<bool, ProjectionError> {
        let since = self.store.forgotten_through()?.unwrap_or(i64::MIN);
        let folded = self.checkpoints.iter().any(|c| *c > 0);
        Ok(folded && (self.held_unfolded || self.read.ring().expiring_between(since, now_ms)))
    }

    /// The read path (its key ring holds every grant fed so far).
    pub fn read_path(&self) -> &ReadPath {
        &self.read
    }

    /// The read path, to change its key ring (period secrets, destruction under retention).
    pub fn read_path_mut(&mut self) -> &mut ReadPath {
        &mut self.read
    }

    /// The projections.
    pub fn projections(&self) -> impl Iterator<Item = &dyn Projection> {
        self.projections.iter().map(AsRef::as_ref)
    }

    /// Fold a batch of entries in log order, resuming at `resume_from`. Each goes through the
    /// read path; grants and key events are kept in the store before any projection moves past
    /// them. What the read path refuses is never folded: the refusals are returned (the caller
    /// counts and logs them). Events that pass but do not decode are skipped with a warning.
    pub fn feed(&mut self, entries: &[LogItem<'_>]) -> Result<Vec<Refusal>, ProjectionError> {
        let Some(&(through, ..)) = entries.last() else {
            return Ok(Vec::new());
        };
        let mut kept = Vec::new();
        let mut refused = Vec::new();
        let mut typed = Vec::with_capacity(entries.len());
        let mut holds_through = 0;
        for &(sequence, subject, bytes, stored) in entries {
            let read = match self.read.read(&Incoming::logged(sequence, subject, bytes, stored)) {
                Ok(read) => read,
                Err(refusal) => {
                    refused.push(refusal);
                    continue;
                }
            };
            match read {
                Read::Grant { outcome, .. } => {
                    if sequence > self.grants_through {
                        kept.push((sequence, bytes));
                    }
                    // Keys for sections folded before (as erased) arrived with a legal hold.
                    self.held_unfolded |= outcome == hru_envelope::GrantOutcome::Held;
                    if !self.held_unfolded {
                        // Folded with every hold's grant so far (renewals add nothing).
                        holds_through = sequence;
                    }
                }
                Read::Public(v) => {
                    if matches!(v.header.event_type, EventType::KeyRotated | EventType::KeyRevoked)
                        && sequence > self.grants_through
                    {
                        kept.push((sequence, bytes));
                    }
                }
                Read::Event { envelope, opened } => match open_typed(&opened) {
                    Some(Ok(event)) => typed.push((sequence, envelope.header, event)),
                    Some(Err(e)) => tracing::warn!(sequence, cause = %e, "event does not decode; not folded"),
                    None => {}
                },
            }
        }
        if through > self.grants_through {
            self.store.keep_grants(&kept, through)?;
            self.grants_through = through;
        }
        if holds_through > 0 && !self.held_unfolded && holds_through > self.store.holds_folded()? {
            self.store.set_holds_folded(holds_through)?;
        }
        for (i, projection) in self.projections.iter().enumerate() {
            let after = self.checkpoints[i];
            if through <= after {
                continue;
            }
            let applied: Vec<Applied<'_>> = typed
                .iter()
                .filter(|(s, ..)| *s > after)
                .map(|(sequence, header, event)| Applied {
                    sequence: *sequence,
                    header,
                    event,
                })
                .collect();
            self.store.apply(projection.as_ref(), &applied, through)?;
            self.checkpoints[i] = through;
        }
        Ok(refused)
    }
}
