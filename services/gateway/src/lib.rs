//! The EM gateway: vendor fixes in, signed and encrypted position batches out to
//! `HRU_POSITIONS`. A batch closes when it holds `batch_size` fixes or its oldest fix has waited
//! `linger`; while no fixes arrive, an empty batch goes out every `heartbeat` so the geofence can
//! tell "no alert" from "no data". `simulate` drives it with tags moving around Cheshire.

pub mod run;
pub mod settings;
pub mod simulate;

pub use settings::GatewaySettings;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hru_domain::{CaseId, EventType, PlainSection, ProducerId};
use hru_envelope::{Directory, Sealer};
use hru_log::PositionLog;
use hru_policy::CompiledIsa;
use hru_wire::v1 as pb;
use prost::Message as _;

/// Batching settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GatewayConfig {
    /// Fixes per batch at most.
    pub batch_size: usize,
    /// How long the oldest fix may wait for its batch.
    pub linger: Duration,
    /// An empty batch (a heartbeat) after this long without fixes.
    pub heartbeat: Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            batch_size: 2_000,
            linger: Duration::from_millis(10),
            heartbeat: Duration::from_secs(1),
        }
    }
}

/// Why a batch could not go out.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// Sealing failed (e.g. the agreement lets this party share no positions).
    #[error("sealing a position batch: {0}")]
    Seal(#[from] hru_envelope::SealError),
    /// Publishing failed; the batch stays pending and goes out with the next flush.
    #[error(transparent)]
    Log(#[from] hru_log::LogError),
}

/// What one flush sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flushed {
    /// Fixes in the batch.
    pub fixes: usize,
    /// Envelopes published (the batch, plus key grants when an epoch turned).
    pub envelopes: usize,
}

/// A batch's fixes take at most this many bytes encoded (well under the server's 1 MiB
/// payload limit, with room for sealing), whatever `batch_size` says.
pub const MAX_BATCH_BYTES: usize = 256 * 1024;

/// Batches' worth of fixes a gateway keeps while the broker is unreachable; beyond that it takes
/// no more from its feed (the vendor's side waits) until some go out.
pub const BACKLOG_BATCHES: usize = 100;

/// How often a running gateway reads the members' period keys again.
pub const PERIOD_KEYS_REFRESH: Duration = Duration::from_secs(3600);

/// Turns vendor fixes into sealed position batches.
pub struct Gateway {
    /// One sealer per partition: each partition's batches form their own producer chain with
    /// their own epoch keys, granted on that partition's subject, so a geofence reading one
    /// partition holds every key and every link it needs.
    sealers: Vec<Sealer>,
    producer: ProducerId,
    signing: ed25519_dalek::SigningKey,
    isa: CompiledIsa,
    directory: Directory,
    log: PositionLog,
    /// How many partitions the position stream is divided into.
    partitions: u32,
    /// The batches of the current flush not yet sealed, one per partition.
    queue: std::collections::VecDeque<pb::PositionBatch>,
    config: GatewayConfig,
    /// The gateway's stable identity, named in every batch (its producer instance changes
    /// each run; this does not).
    name: String,
    devices: Vec<pb::DeviceFixes>,
    index: HashMap<String, usize>,
    pending: usize,
    oldest: Option<Instant>,
    last_flush: Instant,
    /// The heartbeat time the last flush went out with (0: none yet).
    heartbeat_ms: i64,
    rng: rand::rngs::StdRng,
    /// A sealed batch whose publish failed: sent again, byte for byte, before anything else, so
    /// the chain never forks and `Nats-Msg-Id` removes any copy the server already has.
    inflight: Option<Inflight>,
    /// Where the members' period keys are read again when a month has none (the vendor's view
    /// of the log), with the deployment's directory they amend.
    periods: Option<(hru_log::PartyView, Directory, Instant)>,
}

struct Inflight {
    sealed: hru_envelope::SealedBatch,
    envelopes: Vec<(String, Bytes)>,
    subject: hru_broker::Subject,
    partition: u32,
    fixes: usize,
}

impl Gateway {
    /// A gateway sealing as `producer` under `isa`, publishing to `log`.
    pub fn new(
        producer: ProducerId,
        signing: ed25519_dalek::SigningKey,
        isa: CompiledIsa,
        directory: Directory,
        log: PositionLog,
        config: GatewayConfig,
    ) -> Self {
        Self {
            name: producer.instance.clone(),
            sealers: vec![Sealer::new(producer.clone(), signing.clone())],
            producer,
            signing,
            isa,
            directory,
            log,
            partitions: 1,
            queue: std::collections::VecDeque::new(),
            config,
            devices: Vec::new(),
            index: HashMap::new(),
            pending: 0,
            oldest: None,
            last_flush: Instant::now(),
            heartbeat_ms: 0,
            rng: <rand::rngs::StdRng as rand::SeedableRng>::from_entropy(),
            inflight: None,
            periods: None,
        }
    }

    /// Name the gateway `name` in its batches: its stable identity across restarts (each run
    /// seals as a new producer instance, so its chain never forks). Without it, the instance.
    pub fn named(mut self, name: &str) -> Self {
        name.clone_into(&mut self.name);
        self
    }

    /// Divide every flush among `partitions` of the position stream (as many as the stream's
    /// metadata names): each tag's fixes go to its partition, every victim device's to all.
    pub fn partitioned(mut self, partitions: u32) -> Self {
        self.partitions = partitions.max(1);
        // One partition keeps the run's instance; several, one producer instance each.
        self.sealers = if self.partitions == 1 {
            vec![Sealer::new(self.producer.clone(), self.signing.clone())]
        } else {
            (0..self.partitions)
                .map(|p| {
                    let producer = ProducerId {
                        party: self.producer.party.clone(),
                        instance: format!("{}-p{p}", self.producer.instance),
                    };
                    Sealer::new(producer, self.signing.clone())
                })
                .collect()
        };
        self
    }

    /// The gateway's stable identity.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Read the members' period keys again when [`PERIOD_KEYS_REFRESH`] has passed (a failed
    /// read is logged and tried again at the next flush; grants meanwhile use what was read).
    async fn refresh_period_keys(&mut self) {
        use hru_log::SharedLog as _;
        let Some((view, deployed, read_at)) = &mut self.periods else {
            return;
        };
        if read_at.elapsed() < PERIOD_KEYS_REFRESH {
            return;
        }
        match hru_log::periods::directory_with_periods(view.reader(), deployed).await {
            Ok(d) => {
                self.directory = d;
                *read_at = Instant::now();
            }
            Err(e) => tracing::warn!(cause = %e, "members' period keys not read again; trying at the next flush"),
        }
    }

    /// Seal grants to the period keys members publish on the log `view` reads (decision 010):
    /// read now, and again every [`PERIOD_KEYS_REFRESH`]. `deployed` is the deployment's
    /// directory.
    pub async fn with_period_keys(
        mut self,
        view: hru_log::PartyView,
        deployed: Directory,
    ) -> Result<Self, hru_log::LogError> {
        use hru_log::SharedLog as _;
        self.directory = hru_log::periods::directory_with_periods(view.reader(), &deployed).await?;
        self.periods = Some((view, deployed, Instant::now()));
        Ok(self)
    }

    /// Take one vendor fix.
    pub fn push(&mut self, device: &str, victim: bool, fix: pb::PositionFix) {
        let i = *self.index.entry(device.to_owned()).or_insert_with(|| {
            self.devices.push(pb::DeviceFixes {
                device_id: device.to_owned(),
                victim_device: victim,
                fixes: Vec::new(),
            });
            self.devices.len() - 1
        });
        self.devices[i].fixes.push(fix);
        self.pending += 1;
        self.oldest.get_or_insert_with(Instant::now);
    }

    /// Fixes waiting for a batch.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Whether a sealed batch is waiting to be published again (its last publish failed).
    pub fn has_inflight(&self) -> bool {
        self.inflight.is_some()
    }

    /// Whether as many fixes wait as the gateway keeps while it cannot publish
    /// ([`BACKLOG_BATCHES`] batches): take no more until some go out.
    pub fn backlog_full(&self) -> bool {
        self.pending >= self.config.batch_size.saturating_mul(BACKLOG_BATCHES)
    }

    /// Whether a batch (or a heartbeat) is due at `now`.
    pub fn due(&self, now: Instant) -> bool {
        self.pending >= self.config.batch_size
            || self.oldest.is_some_and(|t| now.duration_since(t) >= self.config.linger)
            || (self.pending == 0 && now.duration_since(self.last_flush) >= self.config.heartbeat)
    }

    /// When the next batch or heartbeat falls due, from `now`.
    pub fn next_due(&self, now: Instant) -> Duration {
        match self.oldest {
            Some(t) => self.config.linger.saturating_sub(now.duration_since(t)),
            None => self
                .config
                .heartbeat
                .saturating_sub(now.duration_since(self.last_flush)),
        }
    }

    /// Seal what is pending (possibly nothing: a heartbeat) with heartbeat time `now_ms` and
    /// publish it, one batch per partition. A batch whose publish fails is kept and sent again
    /// first on the next flush, then the partitions' batches still waiting.
    pub async fn flush(&mut self, now_ms: i64) -> Result<Flushed, GatewayError> {
        if self.inflight.is_none() && self.queue.is_empty() {
            self.refresh_period_keys().await;
            self.queue = self.divide(now_ms).into();
        }
        let mut flushed = Flushed::default();
        loop {
            let inflight = match self.inflight.take() {
                Some(i) => i,
                None => match self.queue.pop_front() {
                    Some(batch) => self.seal(batch, now_ms)?,
                    None => break,
                },
            };
            if let Err(e) = self.log.publish(&inflight.subject, &inflight.envelopes).await {
                self.inflight = Some(inflight);
                return Err(e.into());
            }
            self.sealers[inflight.partition as usize].commit(&inflight.sealed, inflight.sealed.envelopes.len());
            flushed.fixes += inflight.fixes;
            flushed.envelopes += inflight.envelopes.len();
        }
        self.last_flush = Instant::now();
        Ok(flushed)
    }

    /// What is pending as batches per partition (at least one each, a heartbeat if empty; more
    /// when a backlog exceeds `batch_size` fixes or [`MAX_BATCH_BYTES`]): each tag's fixes in
    /// its partition's, in order, every victim device's in each (its paired tag may be in
    /// any), all with heartbeat `now_ms`.
    fn divide(&mut self, now_ms: i64) -> Vec<pb::PositionBatch> {
        let devices = std::mem::take(&mut self.devices);
        self.index.clear();
        self.pending = 0;
        self.oldest = None;
        let mut batches: Vec<pb::PositionBatch> = (0..self.partitions)
            .map(|partition| pb::PositionBatch {
                devices: Vec::new(),
                heartbeat_at_ms: now_ms,
                gateway: self.name.clone(),
                partition,
                partitions: self.partitions,
            })
            .collect();
        for d in devices {
            if d.victim_device {
                for b in &mut batches {
                    b.devices.push(d.clone());
                }
            } else {
                let p = hru_broker::stream::partition_of(&d.device_id, self.partitions);
                batches[p as usize].devices.push(d);
            }
        }
        let max_fixes = self.config.batch_size.max(1);
        let previous = std::mem::replace(&mut self.heartbeat_ms, now_ms);
        batches
            .into_iter()
            .flat_map(|b| split(b, max_fixes, MAX_BATCH_BYTES, previous))
            .collect()
    }

    fn seal(&mut self, batch: pb::PositionBatch, now_ms: i64) -> Result<Inflight, GatewayError> {
        let partition = batch.partition;
        let sealer = &self.sealers[partition as usize];
        let subject = hru_broker::Subject::positions(&sealer.producer().party, &sealer.producer().instance, partition);
        // Victims' fixes are counted once, with the first partition's batch.
        let fixes = batch
            .devices
            .iter()
            .filter(|d| !d.victim_device || batch.partition == 0)
            .map(|d| d.fixes.len())
            .sum();
        let sealed = sealer.prepare_event(
            CaseId(uuid::Uuid::nil()),
            EventType::PositionBatch,
            vec![PlainSection {
                name: "batch",
                bytes: batch.encode_to_vec(),
            }],
            now_ms,
            now_ms,
            &self.isa,
            &self.directory,
            &mut self.rng,
        );
        let sealed = match sealed {
            Ok(s) => s,
            Err(e) => {
                self.queue.push_front(batch);
                return Err(e.into());
            }
        };
        let envelopes = sealed
            .envelopes
            .iter()
            .map(|e| (e.header.event_id.0.to_string(), Bytes::from(e.bytes.clone())))
            .collect();
        Ok(Inflight {
            sealed,
            envelopes,
            subject,
            partition,
            fixes,
        })
    }
}

/// `batch` as consecutive batches of at most `max_fixes` fixes and about `max_bytes` encoded;
/// at least one, empty for a heartbeat. Split, a device's fixes go in the order the engine
/// judges them (device time, then sequence), so none is judged late for landing in a later
/// batch; and only the last batch carries the new heartbeat (the earlier ones
/// `previous_heartbeat_ms`), so event time does not pass a tag whose fixes are still to come.
fn split(
    mut batch: pb::PositionBatch,
    max_fixes: usize,
    max_bytes: usize,
    previous_heartbeat_ms: i64,
) -> Vec<pb::PositionBatch> {
    if batch.devices.iter().map(|d| d.fixes.len()).sum::<usize>() <= max_fixes && batch.encoded_len() <= max_bytes {
        return vec![batch];
    }
    for d in &mut batch.devices {
        d.fixes.sort_by_key(|f| (f.device_time_ms, f.fix_seq));
    }
    let empty = || pb::PositionBatch {
        devices: Vec::new(),
        heartbeat_at_ms: previous_heartbeat_ms,
        ..batch.clone()
    };
    let mut out = Vec::new();
    let mut current = empty();
    let (mut fixes, mut bytes) = (0usize, 0usize);
    for device in &batch.devices {
        let part = |fixes: Vec<pb::PositionFix>| pb::DeviceFixes {
            device_id: device.device_id.clone(),
            victim_device: device.victim_device,
            fixes,
        };
        let mut taken = Vec::new();
        for fix in &device.fixes {
            // The fix, its field tags and lengths, and (at worst) its device's entry again.
            let size = fix.encoded_len() + 8 + device.device_id.len();
            if fixes > 0 && (fixes == max_fixes || bytes + size > max_bytes) {
                if !taken.is_empty() {
                    current.devices.push(part(std::mem::take(&mut taken)));
                }
                out.push(std::mem::replace(&mut current, empty()));
                (fixes, bytes) = (0, 0);
            }
            taken.push(*fix);
            fixes += 1;
            bytes += size;
        }
        if !taken.is_empty() {
            current.devices.push(part(taken));
        }
    }
    current.heartbeat_at_ms = batch.heartbeat_at_ms;
    out.push(current);
    out
}
