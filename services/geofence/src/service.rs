//! The geofence service (`hru geofence run`): rebuilds the engine's state from the log on start,
//! then follows `HRU_POSITIONS` and the zone, rule and tag events it is entitled to, appends each
//! breach decision as a sealed TagBreach, and publishes a signed victim alert for proximity and
//! exclusion breaches in parallel with the control-room event.
//!
//! Exactly once across restarts: each decision's event id (its `Nats-Msg-Id`) is a UUIDv7
//! derived from the breach id, state and time, so the server drops a repeated append within its
//! duplicate window; and on start the service reads back the TagBreach events it has already
//! appended, so replaying its inputs appends only the decisions a crash cut off.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt as _;
use hru_domain::{DeviceId, EventType, PartyId, ProducerId, split_draft};
use hru_envelope::{Directory, OpenedEvent, PartySecrets, VerifiedEnvelope};
use hru_log::periods::{self, PeriodHolder};
use hru_log::{Expect, LogEntry, PartyView, PositionLog, Producer, SharedLog as _};
use hru_policy::CompiledIsa;
use hru_reader::{Incoming, Read, ReadPath};
use hru_runtime::{Deployment, Tasks};
use hru_wire::v1 as pb;
use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
use prometheus_client::registry::Registry;
use prost::Message as _;
use serde::Deserialize;

use crate::engine::{Action, BreachUpdate, Config, Input, State};
use crate::inputs::Inputs;
use crate::snapshots::Snapshots;

/// Domain separation of a victim alert's signature.
pub const ALERT_DOMAIN: &[u8] = b"hru.v1.VictimAlert\0";

/// The service's settings (TOML; `HRU_NATS_URL` overrides `nats_url`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeofenceConfig {
    /// The party the service runs as.
    #[serde(default = "default_party")]
    pub party: String,
    /// Producer instance name.
    #[serde(default = "default_instance")]
    pub instance: String,
    /// Directory with the party's secret key file.
    pub keys_dir: PathBuf,
    /// Directory with directory.toml and the agreements.
    pub policies_dir: PathBuf,
    /// The producer store.
    pub data_dir: PathBuf,
    /// The party's period chains (decision 010), replaced as periods expire; default
    /// `<keys_dir>/<party>.periods.toml`. Set it on writable storage when `keys_dir` is not.
    #[serde(default)]
    pub periods_file: Option<PathBuf>,
    /// NATS URL(s), comma-separated.
    #[serde(default = "default_nats")]
    pub nats_url: String,
    /// Where to serve Prometheus metrics (`GET /metrics`), if anywhere.
    #[serde(default)]
    pub metrics_listen: Option<String>,
    /// Engine thresholds.
    #[serde(default)]
    pub engine: EngineSettings,
    /// Seconds between state snapshots (and one on a clean stop); 0: none are written, and a
    /// restart replays every input.
    #[serde(default = "default_snapshot_every_s")]
    pub snapshot_every_s: f64,
    /// Seconds after which a fitted tag none of whose messages has been read, by the
    /// geofence's own clock, has lapsed monitoring (a MONITORING_LAPSED breach).
    #[serde(default = "default_lapse_after_s")]
    pub lapse_after_s: f64,
    /// Seconds between the geofence's signed heartbeats (in `HRU_HEARTBEATS`).
    #[serde(default = "default_heartbeat_s")]
    pub heartbeat_s: f64,
    /// The partitions of the position stream this instance takes as soon as nobody holds them;
    /// the others it takes only once they have gone unheld (their instance stopped) for
    /// `takeover_after_s`. Default: every partition.
    #[serde(default)]
    pub prefer_partitions: Option<Vec<u32>>,
    /// Seconds a partition this instance does not prefer must go unheld before it takes it.
    #[serde(default = "default_takeover_after_s")]
    pub takeover_after_s: f64,
}

/// Engine thresholds as configured (each optional; defaults from `Config::default`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSettings {
    /// Consecutive clear fixes that close a breach.
    pub exit_fixes: Option<u32>,
    /// Seconds of clear fixes that close a breach.
    pub exit_seconds: Option<i64>,
    /// Seconds after which a fix counts as late.
    pub late_after_s: Option<i64>,
    /// Battery percent counted as low.
    pub battery_low_percent: Option<u32>,
    /// Seconds without a GPS fix before no-fix.
    pub no_fix_after_s: Option<i64>,
    /// Seconds without any message before no-communication.
    pub no_comm_after_s: Option<i64>,
}

impl EngineSettings {
    /// The engine configuration.
    pub fn config(&self) -> Config {
        let d = Config::default();
        Config {
            exit_fixes: self.exit_fixes.unwrap_or(d.exit_fixes),
            exit_seconds: self.exit_seconds.unwrap_or(d.exit_seconds),
            late_after_ms: self.late_after_s.map_or(d.late_after_ms, |s| s * 1000),
            battery_low_percent: self.battery_low_percent.unwrap_or(d.battery_low_percent),
            no_fix_after_ms: self.no_fix_after_s.map_or(d.no_fix_after_ms, |s| s * 1000),
            no_comm_after_ms: self.no_comm_after_s.map_or(d.no_comm_after_ms, |s| s * 1000),
            ..d
        }
    }
}

fn default_snapshot_every_s() -> f64 {
    300.0
}
fn default_lapse_after_s() -> f64 {
    60.0
}
fn default_heartbeat_s() -> f64 {
    5.0
}
fn default_takeover_after_s() -> f64 {
    1.0
}
fn default_party() -> String {
    "geofence".into()
}
fn default_instance() -> String {
    "geofence-1".into()
}
fn default_nats() -> String {
    "nats://127.0.0.1:4222".into()
}

/// Environment override of `nats_url`.
pub const ENV_NATS_URL: &str = "HRU_NATS_URL";

impl hru_runtime::Settings for GeofenceConfig {
    const ENV: &'static [(&'static str, &'static str)] = &[(ENV_NATS_URL, "nats_url")];

    fn validate(&self) -> Result<(), hru_runtime::ConfigError> {
        let key = |k: &str, message: String| hru_runtime::ConfigError::key("", k, message);
        PartyId::parse(&self.party, "party").map_err(|e| key("party", e.problem))?;
        if let Some(m) = &self.metrics_listen
            && m.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(key("metrics_listen", format!("{m:?} is not host:port")));
        }
        if !(self.snapshot_every_s.is_finite() && self.snapshot_every_s >= 0.0) {
            return Err(key(
                "snapshot_every_s",
                "must be 0 (no snapshots) or a number of seconds".into(),
            ));
        }
        if let Some(prefer) = &self.prefer_partitions
            && let Some(p) = prefer.iter().find(|p| **p >= hru_broker::stream::MAX_PARTITIONS)
        {
            return Err(key(
                "prefer_partitions",
                format!("{p} is no partition: they are numbered from 0 to the stream's partitions less one"),
            ));
        }
        if !(self.takeover_after_s.is_finite() && self.takeover_after_s >= 0.0) {
            return Err(key("takeover_after_s", "must be 0 or a number of seconds".into()));
        }
        for (name, value) in [("lapse_after_s", self.lapse_after_s), ("heartbeat_s", self.heartbeat_s)] {
            if !(value.is_finite() && value > 0.0) {
                return Err(key(name, "must be a number of seconds above 0".into()));
            }
        }
        let e = self.engine.config();
        if e.exit_fixes == 0 {
            return Err(key("engine.exit_fixes", "must be at least 1".into()));
        }
        if e.exit_seconds <= 0 {
            return Err(key("engine.exit_seconds", "must be at least 1".into()));
        }
        Ok(())
    }
}

impl GeofenceConfig {
    /// Parse `text` (from `source`), apply `HRU_*` environment overrides, check it; errors
    /// name the key.
    pub fn load(text: &str, source: &str, env: impl Fn(&str) -> Option<String>) -> Result<Self, GeofenceError> {
        Ok(hru_runtime::load(text, source, env, &[])?)
    }
}

/// Why the service stopped.
#[derive(Debug, thiserror::Error)]
pub enum GeofenceError {
    /// The configuration is wrong (the error names the key).
    #[error("configuration: {0}")]
    Config(#[from] hru_runtime::ConfigError),
    /// The party's name in the configuration is not a party id.
    #[error("configuration: key `party`: {0}")]
    Party(#[source] hru_domain::FieldError),
    /// The deployment (agreements, directory, keys) could not be loaded.
    #[error(transparent)]
    Deployment(#[from] hru_runtime::DeploymentError),
    /// The metrics endpoint could not listen where configured.
    #[error("configuration: key `metrics_listen` ({addr}): {source}")]
    MetricsListen {
        /// The configured address.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A breach decision could not be sealed under the agreement in force.
    #[error("sealing a TagBreach: {0}")]
    Seal(#[from] hru_envelope::SealError),
    /// The log failed.
    #[error(transparent)]
    Log(#[from] hru_log::LogError),
    /// The producer store failed.
    #[error(transparent)]
    Store(#[from] hru_log::StoreError),
    /// A partition's worker failed unexpectedly (it panicked).
    #[error("a partition's worker failed: {0}")]
    Worker(String),
    /// A local file or directory could not be made.
    #[error("configuration: key `{key}` ({path}): {source}")]
    Local {
        /// The configuration key naming it.
        key: &'static str,
        /// The path.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Counters the service keeps (read by benchmarks, served as Prometheus metrics).
#[derive(Debug, Default)]
pub struct Stats {
    /// Fixes evaluated.
    pub fixes: Counter,
    /// TagBreach events appended.
    pub breaches: Counter,
    /// Victim alerts stored in their devices' streams.
    pub alerts: Counter,
    /// Victim alerts the broker did not store (an unpaired device, a broker failure).
    pub alerts_failed: Counter,
    /// Decisions found already in the log on a restart (not appended again).
    pub already_logged: Counter,
    /// 1 once every partition this instance prefers is settled: rebuilt here and evaluated,
    /// or held by another instance (a standby is ready).
    pub ready: Gauge,
    /// Partitions of the position stream this instance holds and evaluates.
    pub partitions_held: Gauge,
    /// Zones the service holds (every zone defined and not revoked that it has read).
    pub zones: Gauge,
    /// Tags the service knows of (fitted, as far as it has read).
    pub tags: Gauge,
    /// Gateways heard from and not retired: each holds event time back until it is heard again.
    pub gateways: Gauge,
    /// Event time (Unix ms): the oldest latest heartbeat among those gateways; 0 before any.
    pub event_time_ms: Gauge,
    /// Messages the read path refused, by reason (never acted on).
    pub read_refused: hru_runtime::metrics::ReadRefused,
    /// State snapshots written.
    pub snapshots: Counter,
    /// State snapshots that could not be written.
    pub snapshots_failed: Counter,
    /// Snapshots passed over on start (torn, corrupt, unopenable or taken under other
    /// thresholds).
    pub snapshots_rejected: Counter,
    /// 1 when the state was restored from a snapshot on start, 0 when it was replayed in full.
    pub restored: Gauge,
    /// Position-stream messages replayed on start (after the snapshot's cut, if one was used).
    pub replayed_positions: Gauge,
    /// Fitted tags whose monitoring has lapsed (nothing read from them for the lapse time).
    pub lapsed: Gauge,
    /// Heartbeats stored in `HRU_HEARTBEATS`.
    pub heartbeats: Counter,
    /// Heartbeats the broker did not store.
    pub heartbeats_failed: Counter,
}

impl Stats {
    /// Whether the state is rebuilt and the live log followed.
    pub fn is_ready(&self) -> bool {
        self.ready.get() == 1
    }

    /// A registry of the counters; `hru_geofence_ready` is 1 once the state is rebuilt.
    pub fn registry(&self) -> Registry {
        let mut registry = Registry::default();
        registry.register("hru_geofence_fixes", "Position fixes evaluated", self.fixes.clone());
        self.read_refused.register(&mut registry);
        registry.register(
            "hru_geofence_breaches",
            "Breach updates appended",
            self.breaches.clone(),
        );
        registry.register(
            "hru_geofence_alerts",
            "Victim alerts stored in their devices' streams",
            self.alerts.clone(),
        );
        registry.register(
            "hru_geofence_alerts_failed",
            "Victim alerts the broker did not store (unpaired device, broker failure)",
            self.alerts_failed.clone(),
        );
        registry.register(
            "hru_geofence_already_logged",
            "Decisions found already on the log (after a restart)",
            self.already_logged.clone(),
        );
        registry.register(
            "hru_geofence_ready",
            "Whether every partition this instance prefers is rebuilt here or held by another instance",
            self.ready.clone(),
        );
        registry.register("hru_geofence_zones", "Zones held", self.zones.clone());
        registry.register(
            "hru_geofence_partitions_held",
            "Partitions of the position stream this instance holds and evaluates",
            self.partitions_held.clone(),
        );
        registry.register(
            "hru_geofence_snapshots",
            "State snapshots written",
            self.snapshots.clone(),
        );
        registry.register(
            "hru_geofence_snapshots_failed",
            "State snapshots that could not be written",
            self.snapshots_failed.clone(),
        );
        registry.register(
            "hru_geofence_snapshots_rejected",
            "Snapshots passed over on start (torn, corrupt, unopenable, other thresholds)",
            self.snapshots_rejected.clone(),
        );
        registry.register(
            "hru_geofence_restored",
            "1 when the state was restored from a snapshot on start, 0 when replayed in full",
            self.restored.clone(),
        );
        registry.register(
            "hru_geofence_lapsed",
            "Fitted tags whose monitoring has lapsed (nothing read from them for the lapse time)",
            self.lapsed.clone(),
        );
        registry.register(
            "hru_geofence_heartbeats",
            "Heartbeats stored in HRU_HEARTBEATS",
            self.heartbeats.clone(),
        );
        registry.register(
            "hru_geofence_heartbeats_failed",
            "Heartbeats the broker did not store",
            self.heartbeats_failed.clone(),
        );
        registry.register(
            "hru_geofence_replayed_positions",
            "Position-stream messages replayed on start (after the snapshot's cut, if any)",
            self.replayed_positions.clone(),
        );
        registry.register("hru_geofence_tags", "Tags known", self.tags.clone());
        registry.register(
            "hru_geofence_gateways",
            "Gateways heard from and not retired (each holds event time back until heard again)",
            self.gateways.clone(),
        );
        registry.register(
            "hru_geofence_event_time_ms",
            "Event time, Unix ms: the oldest latest heartbeat among those gateways (0 before any)",
            self.event_time_ms.clone(),
        );
        registry
    }
}

/// What one partition's service last added to the process's gauges.
#[derive(Debug, Default, Clone, Copy)]
struct Counted {
    tags: i64,
    lapsed: i64,
}

impl Service {
    /// Publish how many zones and tags the state holds, the gateways heard and event time
    /// (tags and lapses summed over the partitions this process holds).
    fn count_state(&mut self) {
        let as_i64 = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.stats.zones.set(as_i64(self.state.zone_count()));
        let now = Counted {
            tags: as_i64(self.state.tag_count()),
            lapsed: as_i64(self.coverage.lapsed()),
        };
        self.stats.tags.inc_by(now.tags - self.counted.tags);
        self.stats.lapsed.inc_by(now.lapsed - self.counted.lapsed);
        self.counted = now;
        self.stats
            .gateways
            .set(i64::try_from(self.inputs.gateways().count()).unwrap_or(i64::MAX));
        self.stats.event_time_ms.set(self.inputs.event_time().unwrap_or(0));
    }

    /// Take this partition's share off the process's gauges (its state is being dropped).
    fn uncount(&mut self) {
        self.stats.tags.dec_by(self.counted.tags);
        self.stats.lapsed.dec_by(self.counted.lapsed);
        self.counted = Counted::default();
    }
}

struct Service {
    party: PartyId,
    isa: CompiledIsa,
    /// The directory breaches are sealed with: the deployment's, with the period keys each
    /// party last published on the log.
    directory: Directory,
    /// The deployment's directory.
    deployed: Directory,
    /// This party's period chains (shared by the process's partitions).
    periods: Arc<tokio::sync::Mutex<PeriodHolder>>,
    secrets: Arc<PartySecrets>,
    log: PartyView,
    alerts: hru_log::AlertPublisher,
    producer: Producer,
    read: ReadPath,
    state: State,
    logged: HashSet<String>,
    /// What each event tells the engine, and each gateway's latest heartbeat.
    inputs: Inputs,
    stats: Arc<Stats>,
    /// What this partition added to the process's gauges (taken off when it is dropped).
    counted: Counted,
    /// Where state snapshots go (none: not written, every start replays everything); taken
    /// out while a write is under way.
    snapshots: Option<Snapshots>,
    /// The snapshot being written, off the loop that evaluates fixes.
    writing: Option<tokio::task::JoinHandle<Writing>>,
    /// Whether positions were forgotten since the last snapshot (it must be written again).
    forgotten: bool,
    /// The last view and position-stream messages read before the cut (sequence, bytes): a
    /// snapshot names their digests, so one taken on other streams is not used.
    last_event: Option<Seen>,
    last_position: Option<Seen>,
    /// Each fitted tag's coverage, by this service's clock (once it follows the live log).
    coverage: crate::coverage::Coverage,
    /// Whether the state is rebuilt and live inputs are being read.
    live: bool,
    /// When a position batch was last read, by this service's clock.
    batch_read_ms: Option<i64>,
    /// Where heartbeats go (none: the stream is not usable).
    heartbeats: Option<hru_log::KeptStream>,
    /// How often heartbeats go out, and snapshots are written (none: never).
    heartbeat_every: Duration,
    snapshot_every: Option<Duration>,
    /// This instance's name.
    instance: String,
    /// The partition of the position stream this service evaluates, of how many.
    partition: u32,
    partitions: u32,
    /// Messages of the partition stored but not yet delivered, as the last delivery said.
    pending: u64,
    /// The engine thresholds' digest (a snapshot taken under others is not used).
    config_digest: [u8; 32],
    /// The cut of inputs the state covers: the next view and position-stream sequences.
    next_event: u64,
    next_position: u64,
    /// The cut the last snapshot written covers.
    snapshot_cut: (u64, u64),
    /// Key events read from the position stream, kept for snapshots (the read path needs them
    /// to open the tail after a restart).
    position_keys: Vec<pb::LoggedMessage>,
    /// How long positions are kept: older ones are forgotten by the engine too.
    positions_max_age: Duration,
}

/// A TagBreach in the log, as opened: its breach, if its core section opens and decodes.
pub fn logged_breach(opened: &OpenedEvent) -> Option<hru_domain::Breach> {
    let core = opened
        .sections
        .iter()
        .find(|s| s.name == "core")?
        .plaintext
        .as_ref()
        .ok()?;
    let core = pb::BreachCore::decode(core.as_slice()).ok()?;
    hru_domain::Breach::try_from(core).ok()
}

/// The message id of a TagBreach in the log (as `BreachUpdate::message_id`), as opened.
pub fn logged_id(opened: &OpenedEvent) -> Option<String> {
    let breach = logged_breach(opened)?;
    Some(match breach.state {
        pb::BreachState::Opened => breach.breach_id.to_string(),
        other => format!("{}-{}-{}", breach.breach_id, other.as_str_name(), breach.observed_at_ms),
    })
}

/// What a breach update is sealed as: in its case, with an id derived from the decision (the
/// same decision taken again is the same event, stored once); none for a tag with no case.
fn breach_event(b: &BreachUpdate) -> Option<hru_log::EventToSeal> {
    let Some(case) = b.case else {
        tracing::warn!(
            tag = %b.tag,
            kind = b.kind.as_str_name(),
            "breach of a tag with no case (no TagFitted); not appended"
        );
        return None;
    };
    let (event_type, sections) = split_draft(pb::event_draft::Event::TagBreach(pb::TagBreach {
        core: Some(b.core()),
    }));
    Some(hru_log::EventToSeal {
        case_id: case,
        event_type,
        sections,
        occurred_at_ms: b.observed_at_ms,
        event_id: Some(hru_domain::EventId::derived_v7(
            b.observed_at_ms,
            b.message_id().as_bytes(),
        )),
    })
}

impl Service {
    async fn handle(&mut self, actions: Vec<Action>) -> Result<(), GeofenceError> {
        let mut alerts = Vec::new();
        for a in actions {
            match a {
                Action::Breach(b) => {
                    let id = b.message_id();
                    if self.logged.contains(&id) {
                        self.stats.already_logged.inc();
                        // Its victim alert went out with it; nothing to send again.
                        alerts.retain(|(bid, _): &(uuid::Uuid, _)| *bid != b.breach_id);
                        continue;
                    }
                    let pending = std::mem::take(&mut alerts);
                    self.append(&b, pending).await?;
                    self.logged.insert(id);
                }
                Action::VictimAlert {
                    breach_id,
                    victim_device,
                    kind,
                    distance_m,
                    ..
                } => alerts.push((breach_id, (victim_device, kind, distance_m))),
                Action::Possible { tag, rule, fix_seq } => {
                    tracing::debug!(%tag, %rule, fix_seq, "possible breach: accuracy circle straddles the boundary")
                }
                Action::StaleVictimFix { tag, rule, age_ms } => {
                    tracing::info!(%tag, %rule, ?age_ms, "victim fix too old to judge proximity")
                }
            }
        }
        Ok(())
    }

    /// Append one breach and, in parallel, publish the victim alerts raised with it.
    async fn append(
        &mut self,
        b: &BreachUpdate,
        alerts: Vec<(uuid::Uuid, (DeviceId, pb::BreachKind, f64))>,
    ) -> Result<(), GeofenceError> {
        let Some(e) = breach_event(b) else { return Ok(()) };
        let now = jiff::Timestamp::now().as_millisecond();
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_entropy();
        let batch = self.producer.sealer().prepare_event_with_id(
            e.event_id,
            e.case_id,
            e.event_type,
            e.sections,
            e.occurred_at_ms,
            now,
            &self.isa,
            &self.directory,
            &mut rng,
        )?;
        let alert_of = b.message_id();
        let send_alerts = async {
            for (breach_id, (device, kind, distance)) in &alerts {
                let alert = pb::VictimAlert {
                    breach_id: breach_id.as_bytes().to_vec(),
                    kind: *kind as i32,
                    distance_m: ((distance / 10.0).round() * 10.0) as u32,
                    at_ms: b.observed_at_ms,
                };
                let body = sign_alert(&self.secrets, &alert);
                // One id per breach decision and device: a restarted geofence that decides it
                // again sends it again, and the device's stream keeps it once.
                let id = format!("{alert_of}:{device}");
                match self.alerts.publish(device.as_str(), &id, body.into()).await {
                    Ok(hru_log::Sent::Stored) => {
                        self.stats.alerts.inc();
                    }
                    Ok(hru_log::Sent::Duplicate) => tracing::info!(%device, %id, "victim alert already sent"),
                    Err(e) => {
                        self.stats.alerts_failed.inc();
                        tracing::error!(cause = %e, %device, "victim alert not stored");
                    }
                }
            }
        };
        let (appended, ()) = tokio::join!(self.producer.append(&self.log, &batch, Expect::Any), send_alerts);
        appended?;
        self.stats.breaches.inc();
        Ok(())
    }

    /// Take one message through the read path: a refusal is counted and logged, a grant or
    /// key event taken in, an event fed to the engine.
    async fn read(&mut self, e: &LogEntry) -> Result<(), GeofenceError> {
        match self.read.read(&incoming(e)) {
            Ok(Read::Event { opened, .. }) => self.feed(&opened).await,
            Ok(Read::Public(v)) => {
                let inputs = self.inputs.public(&v);
                self.apply(&inputs).await
            }
            Ok(_) => Ok(()),
            Err(refusal) => {
                self.refused(&refusal);
                Ok(())
            }
        }
    }

    fn refused(&self, refusal: &hru_reader::Refusal) {
        tracing::warn!(%refusal, "refused by the read path; not acted on");
        self.stats.read_refused.inc(refusal.kind.name());
    }

    async fn feed(&mut self, v: &OpenedEvent) -> Result<(), GeofenceError> {
        if v.header.event_type == EventType::TagBreach && v.header.producer.party == self.party {
            if let Some(id) = logged_id(v) {
                self.logged.insert(id);
            }
            return Ok(());
        }
        let inputs = self.inputs.of(v);
        self.apply(&inputs).await
    }

    async fn apply(&mut self, inputs: &[Input]) -> Result<(), GeofenceError> {
        for input in inputs {
            if let Input::Fixes { fixes, .. } = input {
                self.stats.fixes.inc_by(fixes.len() as u64);
            }
            let actions = self.state.apply(input);
            if !actions.is_empty() {
                self.handle(actions).await?;
            }
            if self.live {
                self.cover(input).await?;
            }
        }
        Ok(())
    }

    /// What a live input tells coverage: a tag fitted is watched from now, a tag removed is
    /// not, a tag heard from is monitored again.
    async fn cover(&mut self, input: &Input) -> Result<(), GeofenceError> {
        let now = jiff::Timestamp::now().as_millisecond();
        let update = match input {
            Input::TagFitted { case, tag } => {
                self.coverage.watch(&tag.tag_id, *case, now);
                None
            }
            Input::TagRemoved { tag } => self.coverage.unwatch(tag, now),
            Input::Fixes {
                device: crate::engine::Device::Tag(tag),
                fixes,
            } if !fixes.is_empty() => self.coverage.heard(tag, now),
            _ => None,
        };
        if let Some(b) = update {
            self.handle(vec![Action::Breach(b)]).await?;
        }
        Ok(())
    }

    /// The clock moved on: tags unheard for the lapse time lapse.
    async fn tick(&mut self) -> Result<(), GeofenceError> {
        let now = jiff::Timestamp::now().as_millisecond();
        let lapses = self.coverage.tick(now, self.batch_read_ms);
        if !lapses.is_empty() {
            for b in &lapses {
                tracing::warn!(tag = %b.tag, since_ms = b.opened_at_ms, why = %b.evidence.hysteresis, "monitoring lapsed");
            }
            self.append_group(lapses).await?;
        }
        Ok(())
    }

    /// Append breach updates that carry no victim alert (coverage lapses) as one pipelined
    /// group: a gateway that dies with thousands of tags lapses them all at once, and one
    /// synced append each would hold the evaluation loop for as many round trips.
    async fn append_group(&mut self, updates: Vec<BreachUpdate>) -> Result<(), GeofenceError> {
        let mut events = Vec::with_capacity(updates.len());
        let mut ids = Vec::with_capacity(updates.len());
        for b in updates {
            let id = b.message_id();
            if self.logged.contains(&id) {
                self.stats.already_logged.inc();
                continue;
            }
            let Some(e) = breach_event(&b) else { continue };
            events.push(e);
            ids.push(id);
        }
        if events.is_empty() {
            return Ok(());
        }
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_entropy();
        let now = jiff::Timestamp::now().as_millisecond();
        let group = self
            .producer
            .ahead()
            .seal(events, now, &self.isa, &self.directory, &mut rng)?;
        let appended = self.producer.publish_group(&self.log, &group, false).await?;
        self.stats.breaches.inc_by(appended.len() as u64);
        self.logged.extend(ids);
        Ok(())
    }

    /// Publish a signed heartbeat (off the loop): this instance holds this partition, how far
    /// it has evaluated it, and how much is waiting.
    fn beat(&self) {
        let Some(stream) = self.heartbeats.clone() else { return };
        let every = self.heartbeat_every;
        let heartbeat = pb::GeofenceHeartbeat {
            party: self.party.to_string(),
            instance: self.instance.clone(),
            at_ms: jiff::Timestamp::now().as_millisecond(),
            event_time_ms: self.inputs.event_time().unwrap_or(0),
            evaluated_through: self.next_position.saturating_sub(1),
            pending: self.pending,
            interval_ms: u32::try_from(every.as_millis()).unwrap_or(u32::MAX),
            tags: u32::try_from(self.coverage.watched()).unwrap_or(u32::MAX),
            tags_lapsed: u32::try_from(self.coverage.lapsed()).unwrap_or(u32::MAX),
            partition: self.partition,
            partitions: self.partitions,
        };
        let (secrets, stats) = (self.secrets.clone(), self.stats.clone());
        let subject = hru_broker::Subject::heartbeat(&self.party, &partition_name(self.partition));
        tokio::spawn(async move {
            let sent = tokio::time::timeout(
                every.max(Duration::from_secs(1)),
                stream.put(&subject, hru_log::heartbeats::sign(&secrets, &heartbeat).into()),
            )
            .await;
            match sent {
                Ok(Ok(_)) => {
                    stats.heartbeats.inc();
                }
                Ok(Err(e)) => {
                    stats.heartbeats_failed.inc();
                    tracing::warn!(cause = %e, "heartbeat not stored");
                }
                Err(_) => {
                    stats.heartbeats_failed.inc();
                    tracing::warn!("heartbeat not stored in time");
                }
            }
        });
    }
}

/// Sign a victim alert as the geofence's party: the bytes published on the device's subject.
pub fn sign_alert(secrets: &PartySecrets, alert: &pb::VictimAlert) -> Vec<u8> {
    let body = alert.encode_to_vec();
    let signed = hru_envelope::sign_detached(secrets, ALERT_DOMAIN, &body);
    pb::SignedVictimAlert {
        alert: body,
        signer: secrets.party.to_string(),
        key_id: signed.key_id,
        signature: signed.signature,
    }
    .encode_to_vec()
}

/// Why a published victim alert is not to be believed.
#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    /// The message is not a `SignedVictimAlert`.
    #[error("does not decode as a SignedVictimAlert: {0}")]
    Envelope(#[source] prost::DecodeError),
    /// The signed bytes are not a `VictimAlert`.
    #[error("field `alert` does not decode as a VictimAlert: {0}")]
    Alert(#[source] prost::DecodeError),
    /// The signer is not a party id.
    #[error("field `signer`: {0}")]
    Signer(#[source] hru_domain::FieldError),
    /// The signature does not verify under a key of the signer valid at the fix's time.
    #[error(transparent)]
    Signature(#[from] hru_envelope::DetachedError),
}

/// Check a published victim alert: signed strictly by a key of its signer that was valid when
/// the fix was taken. The alert, or why not.
pub fn verify_alert(bytes: &[u8], directory: &Directory) -> Result<pb::VictimAlert, AlertError> {
    let signed = pb::SignedVictimAlert::decode(bytes).map_err(AlertError::Envelope)?;
    let alert = pb::VictimAlert::decode(signed.alert.as_slice()).map_err(AlertError::Alert)?;
    let signer: PartyId = signed.signer.parse().map_err(AlertError::Signer)?;
    let detached = hru_envelope::Detached {
        key_id: signed.key_id,
        signature: signed.signature,
    };
    hru_envelope::verify_detached(directory, &signer, alert.at_ms, ALERT_DOMAIN, &signed.alert, &detached)?;
    Ok(alert)
}

/// A log entry as the read path takes it: a position batch (or its grant) is numbered by the
/// position stream, not in `HRU_EVENTS` order.
fn incoming(e: &LogEntry) -> Incoming<'_> {
    static POSITIONS: std::sync::LazyLock<hru_broker::Filter> =
        std::sync::LazyLock::new(hru_broker::Filter::all_positions);
    Incoming {
        in_log_order: !e.subject.matches(&POSITIONS),
        ..Incoming::logged(e.sequence, e.subject.as_str(), e.payload.as_ref(), e.stored)
    }
}

/// What every partition's service of one geofence process shares: the deployment, keys,
/// connections and the party's period chains.
struct Common {
    config: GeofenceConfig,
    party: PartyId,
    deployment: Deployment,
    isa: CompiledIsa,
    secrets: Arc<PartySecrets>,
    log: PartyView,
    positions: PositionLog,
    alerts: hru_log::AlertPublisher,
    /// The party's period chains: one file, kept by whichever partition sweeps.
    periods: Arc<tokio::sync::Mutex<PeriodHolder>>,
    snapshots: Option<hru_log::KeptStream>,
    heartbeats: Option<hru_log::KeptStream>,
    stats: Arc<Stats>,
    /// How many partitions the position stream is divided into.
    partitions: u32,
    /// Per partition: whether it is settled (rebuilt here and evaluated, or watched by another
    /// instance, or not preferred here); the process is ready when every one is.
    settled: Vec<std::sync::atomic::AtomicBool>,
}

impl Common {
    /// Mark `partition` settled or not, and publish whether the process is ready.
    fn settle(&self, partition: u32, settled: bool) {
        use std::sync::atomic::Ordering;
        if let Some(s) = self.settled.get(partition as usize) {
            s.store(settled, Ordering::SeqCst);
        }
        let ready = self.settled.iter().all(|s| s.load(Ordering::SeqCst));
        self.stats.ready.set(i64::from(ready));
    }
}

/// Run the geofence until `shutdown` resolves; `stats` counts its work. The process pulls
/// every partition of the position stream in the geofence's priority group: it evaluates the
/// partitions whose pin the server gives it, and stands by for the others, taking one over
/// when the instance holding it stops pulling.
pub async fn run(
    config: GeofenceConfig,
    stats: Arc<Stats>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), GeofenceError> {
    let party: PartyId = config.party.parse().map_err(GeofenceError::Party)?;
    let deployment = Deployment::load(&config.policies_dir)?;
    let isa = deployment.in_force_now()?.clone();
    let secrets = hru_runtime::deployment::secrets(&config.keys_dir, &party)?;
    // The geofence connects with its party's nkey: it reads its view of the log and the
    // position stream, and publishes its breaches and victim alerts.
    let identity = secrets.broker_identity();
    let log = PartyView::open(&config.nats_url, Some(&identity), &party).await?;
    let positions = PositionLog::open(&config.nats_url, Some(&identity), isa.positions_max_age(), 1).await?;
    let partitions = positions.partitions().await?;
    if let Some(p) = config.prefer_partitions.iter().flatten().find(|p| **p >= partitions) {
        return Err(hru_runtime::ConfigError::key(
            "",
            "prefer_partitions",
            format!("{p} is no partition: HRU_POSITIONS has {partitions}, numbered from 0"),
        )
        .into());
    }
    let alerts = hru_log::AlertPublisher::new(log.client());
    // The data directory holds the producer stores' epoch keys.
    hru_envelope::create_private_dir(&config.data_dir).map_err(|source| GeofenceError::Local {
        key: "data_dir",
        path: config.data_dir.display().to_string(),
        source,
    })?;
    let periods_file = config
        .periods_file
        .clone()
        .unwrap_or_else(|| hru_runtime::deployment::periods_path(&config.keys_dir, &party));
    let periods = PeriodHolder::open(&periods_file, &party)?;
    // Instances sharing the partitions must hold one set of period chains (as they hold one
    // secret key): several starting chains of their own at once would fork the party's keys.
    if partitions > 1 && periods.keys().first_months().next().is_none() {
        return Err(GeofenceError::Local {
            key: "periods_file",
            path: periods_file.display().to_string(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!(
                    "holds no period chains, and HRU_POSITIONS has {partitions} partitions, shared by several instances: make the chains once with `hru keys periods --party {party} --keys DIR` and give every instance that file, as its secret key"
                ),
            ),
        });
    }
    let positions_max_age = isa.positions_max_age();
    // Without the snapshot stream (not provisioned yet) the service runs as before: every
    // start replays every input.
    let snapshots = if config.snapshot_every_s > 0.0 {
        match hru_log::KeptStream::open(
            &config.nats_url,
            Some(&identity),
            hru_broker::stream::snapshots_config(positions_max_age, 1),
        )
        .await
        {
            Ok(stream) => Some(stream),
            Err(e) => {
                tracing::warn!(cause = %e, "HRU_SNAPSHOTS not usable (run `hru log provision`); no snapshots: every start replays every input");
                None
            }
        }
    } else {
        None
    };
    let heartbeats = match hru_log::KeptStream::open(
        &config.nats_url,
        Some(&identity),
        hru_broker::stream::heartbeats_config(1),
    )
    .await
    {
        Ok(stream) => Some(stream),
        Err(e) => {
            tracing::warn!(cause = %e, "HRU_HEARTBEATS not usable (run `hru log provision`); no heartbeats: the control room will see the geofence as silent");
            None
        }
    };
    let common = Arc::new(Common {
        party,
        deployment,
        isa,
        secrets: Arc::new(secrets),
        log,
        positions,
        alerts,
        periods: Arc::new(tokio::sync::Mutex::new(periods)),
        snapshots,
        heartbeats,
        settled: (0..partitions)
            .map(|p| {
                // A partition this instance does not prefer is never waited for.
                std::sync::atomic::AtomicBool::new(config.prefer_partitions.as_ref().is_some_and(|pr| !pr.contains(&p)))
            })
            .collect(),
        config,
        stats,
        partitions,
    });
    let mut tasks = Tasks::new();
    if let Some(addr) = &common.config.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| GeofenceError::MetricsListen {
                addr: addr.clone(),
                source,
            })?;
        let (registry, shutdown) = (Arc::new(common.stats.registry()), tasks.shutdown());
        tasks.spawn(async move {
            if let Err(e) = hru_runtime::metrics::serve(listener, registry, shutdown).await {
                tracing::error!(cause = %e, "metrics endpoint stopped");
            }
        });
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut workers = tokio::task::JoinSet::new();
    for partition in 0..partitions {
        workers.spawn(serve_partition(common.clone(), partition, stopped.clone()));
    }
    common.settle(0, common.settled[0].load(std::sync::atomic::Ordering::SeqCst));
    tracing::info!(partitions, instance = %common.config.instance, "pulling every partition of the position stream");
    tokio::pin!(shutdown);
    let mut failed = None;
    tokio::select! {
        () = &mut shutdown => {}
        Some(done) = workers.join_next() => {
            failed = Some(done);
        }
    }
    let _ = stop.send(true);
    while let Some(done) = workers.join_next().await {
        if failed.is_none() || matches!(done, Ok(Err(_))) {
            failed = Some(done);
        }
    }
    tasks.stop().await;
    match failed {
        Some(Ok(Err(e))) => Err(e),
        Some(Err(e)) => Err(GeofenceError::Worker(e.to_string())),
        _ => Ok(()),
    }
}

/// How long a partition is retried through broker failures without one successful rebuild
/// before the process gives up with the error (a refusal for good looks the same at first).
const BROKER_GRACE: Duration = Duration::from_secs(60);

/// A partition's run of broker failures: tolerated (the partition dropped and taken again, as a
/// restarted process would) until [`BROKER_GRACE`] has passed without a successful rebuild.
#[derive(Default)]
struct BrokerTrouble {
    since: Option<tokio::time::Instant>,
}

impl BrokerTrouble {
    /// `Ok` when `e` is a broker failure still within the grace (said in the log as `what`),
    /// the error itself otherwise.
    fn tolerate(&mut self, e: GeofenceError, partition: u32, what: &str) -> Result<(), GeofenceError> {
        let since = *self.since.get_or_insert_with(tokio::time::Instant::now);
        if !broker_failed(&e) || since.elapsed() > BROKER_GRACE {
            return Err(e);
        }
        tracing::warn!(partition, cause = %e, "{what}: the broker failed; taking the partition again");
        Ok(())
    }

    /// A rebuild succeeded: the run of failures is over.
    fn cleared(&mut self) {
        self.since = None;
    }
}

/// Whether `e` is the broker failing a request or a connection (a server restarting, a
/// partition of the network): the partition is rebuilt from the log, the process goes on.
fn broker_failed(e: &GeofenceError) -> bool {
    use hru_log::{AppendError, LogError, StoreError};
    let request = |l: &LogError| matches!(l, LogError::Request { .. } | LogError::Connect { .. });
    match e {
        GeofenceError::Log(l) | GeofenceError::Store(StoreError::Log(l)) => request(l),
        GeofenceError::Store(StoreError::Append(AppendError::Unavailable { .. })) => true,
        _ => false,
    }
}

/// How a partition's service stopped following.
enum Followed {
    /// The process is stopping.
    Stopped,
    /// Another instance was delivered this partition's messages: the state here is stale.
    Lost,
}

/// Watch a partition this instance does not prefer until it has gone unheld for
/// `takeover_after_s` (its instance stopped): true then, false on `stop`.
async fn wait_unheld(common: &Common, partition: u32, stop: &mut tokio::sync::watch::Receiver<bool>) -> bool {
    let after = Duration::from_secs_f64(common.config.takeover_after_s);
    let mut since: Option<tokio::time::Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = stop.changed() => return false,
            _ = tick.tick() => {}
        }
        match hru_log::partition_unheld(&common.positions, &common.party, partition).await {
            Ok(true) => {
                let first = *since.get_or_insert_with(tokio::time::Instant::now);
                if first.elapsed() >= after {
                    tracing::info!(
                        partition,
                        "a partition this instance does not prefer is unheld: taking it"
                    );
                    return true;
                }
            }
            Ok(false) => since = None,
            Err(e) => tracing::debug!(partition, cause = %e, "partition not watched"),
        }
    }
}

/// Serve one partition until `stop`: stand by until the server pins this instance, then
/// reach the state the log implies (from the partition's newest snapshot and the tail after
/// it) while keeping the pin, and evaluate what is delivered; when another instance takes the
/// partition, drop the state and stand by again.
async fn serve_partition(
    common: Arc<Common>,
    partition: u32,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), GeofenceError> {
    let preferred = common
        .config
        .prefer_partitions
        .as_ref()
        .is_none_or(|p| p.contains(&partition));
    let mut trouble = BrokerTrouble::default();
    loop {
        if !preferred && !wait_unheld(&common, partition, &mut stop).await {
            return Ok(());
        }
        let mut feed = match hru_log::PartitionFeed::open(&common.positions, &common.party, partition).await {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(partition, cause = %e, "partition not pulled; trying again");
                tokio::select! {
                    _ = stop.changed() => return Ok(()),
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        // Standby until something is delivered: this instance holds the pin. A partition no
        // instance holds and nothing is delivered from is claimed, so its tags are watched
        // even while no gateway sends.
        let mut claim = tokio::time::interval(Duration::from_millis(500));
        claim.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Held by another instance since: a pin held longer than its timeout is renewed, so
        // its holder is alive (a killed one's pin outlives it by up to the timeout).
        let mut held_since: Option<tokio::time::Instant> = None;
        let first = loop {
            tokio::select! {
                _ = stop.changed() => return Ok(()),
                d = feed.next() => break d,
                _ = claim.tick() => match feed.claim_if_unheld(&common.party).await {
                    Ok(hru_log::Claim::Claimed) => {
                        held_since = None;
                        tracing::info!(partition, "partition unheld and idle: claimed");
                    }
                    // Another instance watches it: this one stands by.
                    Ok(hru_log::Claim::Held) => {
                        let since = *held_since.get_or_insert_with(tokio::time::Instant::now);
                        if since.elapsed() > hru_broker::stream::PARTITION_PIN_TIMEOUT + Duration::from_millis(500) {
                            common.settle(partition, true);
                        }
                    }
                    Ok(hru_log::Claim::Pending) => held_since = None,
                    Err(e) => tracing::debug!(partition, cause = %e, "partition not claimed"),
                },
            }
        };
        let first = match first {
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                tracing::warn!(partition, cause = %e, "partition pull failed; standing by again");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            None => continue,
        };
        common.settle(partition, false);
        let acquired = std::time::Instant::now();
        tracing::info!(
            partition,
            sequence = first.entry.sequence,
            "partition taken: rebuilding its state"
        );
        let mut service = match Service::open(&common, partition).await {
            Ok(service) => service,
            Err(e) => {
                trouble.tolerate(e, partition, "partition not opened")?;
                let _ = feed.release().await;
                tokio::select! {
                    _ = stop.changed() => return Ok(()),
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        // Rebuild while pulling on, so the pin is renewed; what arrives meanwhile waits.
        let mut waiting = vec![first];
        {
            let start = service.start(&common.positions);
            tokio::pin!(start);
            loop {
                tokio::select! {
                    r = &mut start => match r {
                        Ok(()) => break,
                        // A server restarting or a partition healing: what was rebuilt is
                        // dropped, and the partition taken again as a restarted process would.
                        Err(e) => {
                            trouble.tolerate(e, partition, "partition state not rebuilt")?;
                            waiting.clear();
                            break;
                        }
                    },
                    d = feed.next() => match d {
                        Some(Ok(d)) => waiting.push(d),
                        Some(Err(e)) => tracing::warn!(partition, cause = %e, "partition pull failed while rebuilding"),
                        None => break,
                    },
                }
            }
        }
        if waiting.is_empty() {
            let _ = feed.release().await;
            tokio::select! {
                _ = stop.changed() => return Ok(()),
                () = tokio::time::sleep(Duration::from_secs(1)) => continue,
            }
        }
        trouble.cleared();
        service.count_state();
        common.stats.partitions_held.inc();
        common.settle(partition, true);
        tracing::info!(
            partition,
            ms = acquired.elapsed().as_millis() as u64,
            "partition state rebuilt; evaluating"
        );
        // What a full or long replay reached is kept at once.
        service.snapshot().await;
        let followed = follow(&mut service, &mut feed, waiting, &mut stop).await;
        common.stats.partitions_held.dec();
        let followed = match followed {
            Err(e) => {
                // What was not logged is decided again from the log, as after a restart.
                trouble.tolerate(e, partition, "partition dropped")?;
                common.settle(partition, false);
                service.uncount();
                let _ = feed.release().await;
                tokio::select! {
                    _ = stop.changed() => return Ok(()),
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
            Ok(followed) => followed,
        };
        match followed {
            Followed::Stopped => {
                if let Err(e) = feed.release().await {
                    tracing::warn!(partition, cause = %e, "partition pin not released; a standby takes it after the pin timeout");
                }
                service.uncount();
                return Ok(());
            }
            Followed::Lost => {
                tracing::warn!(
                    partition,
                    "another instance took the partition; its state here is dropped"
                );
                service.uncount();
            }
        }
    }
}

pub use hru_broker::stream::partition_name;

impl Service {
    /// A partition's service, its state empty: its own producer (one chain per instance and
    /// partition, so two instances never fork one), its keys with expired ones destroyed.
    async fn open(common: &Common, partition: u32) -> Result<Self, GeofenceError> {
        let config = &common.config;
        let (party, isa) = (&common.party, &common.isa);
        let directory = common.deployment.directory.clone();
        let (instance, store) = if common.partitions == 1 {
            (config.instance.clone(), config.data_dir.join("producer"))
        } else {
            (
                format!("{}-p{partition}", config.instance),
                config.data_dir.join(format!("producer-p{partition}")),
            )
        };
        let mut producer = Producer::open(
            &store,
            ProducerId {
                party: party.clone(),
                instance: instance.clone(),
            },
            common.secrets.signing.clone(),
            &common.log,
            &directory,
        )
        .await?;
        // Keys whose retention ended while the service was down go before anything is
        // evaluated: the producer's epoch keys, then the period secrets its party was granted
        // under.
        destroy_expired(&mut producer, &common.log, isa, &directory).await?;
        let now = jiff::Timestamp::now().as_millisecond();
        let ring = hru_runtime::deployment::key_ring(&config.keys_dir, party)?;
        let mut ring = {
            let mut periods = common.periods.lock().await;
            for d in periods::keep(&mut periods, &mut producer, &common.log, isa, &directory, now).await? {
                tracing::info!(class = %d.class, from = %d.from, to = %d.to, "period secrets destroyed: their retention has ended");
            }
            ring.with_periods(periods.keys(), &periods::published_through(now))
        };
        // Nothing past its retention is evaluated, whichever key its grant is sealed to.
        ring.destroy_expired(now);
        let sealing = periods::directory_with_periods(common.log.reader(), &directory).await?;
        let class = hru_envelope::AudiencePolicy::retention_class(isa, EventType::PositionBatch);
        let snapshots = common
            .snapshots
            .clone()
            .map(|stream| Snapshots::new(stream, party.clone(), partition_name(partition), class));
        let engine = config.engine.config();
        Ok(Service {
            isa: isa.clone(),
            read: ReadPath::new(directory.clone(), Arc::new(common.deployment.policies.clone()), ring),
            secrets: common.secrets.clone(),
            directory: sealing,
            deployed: directory,
            periods: common.periods.clone(),
            log: common.log.clone(),
            alerts: common.alerts.clone(),
            producer,
            config_digest: crate::engine::partitioned_config_digest(&engine, partition, common.partitions),
            state: State::new(engine),
            logged: HashSet::new(),
            inputs: Inputs::new().owning(partition, common.partitions),
            stats: common.stats.clone(),
            counted: Counted::default(),
            snapshots,
            writing: None,
            forgotten: false,
            last_event: None,
            last_position: None,
            coverage: crate::coverage::Coverage::new((config.lapse_after_s * 1000.0) as i64),
            live: false,
            batch_read_ms: None,
            heartbeats: common.heartbeats.clone(),
            heartbeat_every: Duration::from_secs_f64(config.heartbeat_s),
            snapshot_every: (config.snapshot_every_s > 0.0).then(|| Duration::from_secs_f64(config.snapshot_every_s)),
            instance: config.instance.clone(),
            party: party.clone(),
            partition,
            partitions: common.partitions,
            pending: 0,
            next_event: 1,
            next_position: 1,
            snapshot_cut: (0, 0),
            position_keys: Vec::new(),
            positions_max_age: isa.positions_max_age(),
        })
    }
}

/// How long a starting geofence waits for its party's view to catch up with the log.
const VIEW_CATCH_UP: Duration = Duration::from_secs(5);

/// How often a running geofence looks for epoch keys whose retention has ended.
const RETENTION_SWEEP: Duration = Duration::from_secs(3600);

/// Destroy the producer's epoch keys whose retention has ended, each announced on the log.
async fn destroy_expired(
    producer: &mut Producer,
    log: &PartyView,
    isa: &CompiledIsa,
    directory: &hru_envelope::Directory,
) -> Result<(), GeofenceError> {
    let now = jiff::Timestamp::now().as_millisecond();
    for (audience, epoch) in producer.destroy_expired(log, now, now, isa, directory).await? {
        tracing::info!(%audience, epoch, "epoch key destroyed: its retention has ended");
    }
    Ok(())
}

impl Service {
    /// One retention sweep: the producer's expired epoch keys, the party's expired period
    /// secrets and the epoch keys the ring opened under them; then the coming months' keys
    /// published and every party's publications read again.
    async fn sweep(&mut self) -> Result<(), GeofenceError> {
        let now = jiff::Timestamp::now().as_millisecond();
        destroy_expired(&mut self.producer, &self.log, &self.isa, &self.deployed).await?;
        let mut periods = self.periods.lock().await;
        for d in periods::keep(
            &mut periods,
            &mut self.producer,
            &self.log,
            &self.isa,
            &self.deployed,
            now,
        )
        .await?
        {
            tracing::info!(class = %d.class, from = %d.from, to = %d.to, "period secrets destroyed: their retention has ended");
        }
        let ring = self.read.ring_mut();
        ring.set_periods(periods.keys(), &periods::published_through(now));
        drop(periods);
        for (producer, audience, epoch, class, month) in ring.destroy_expired(now) {
            tracing::info!(%producer, %audience, epoch, %class, %month, "granted epoch key destroyed: its retention has ended");
        }
        self.directory = periods::directory_with_periods(self.log.reader(), &self.deployed).await?;
        self.forget_expired_positions();
        Ok(())
    }
}

/// A snapshot write's outcome: the writer back, what happened, and the cut it covers.
type Writing = (
    Snapshots,
    Result<crate::snapshots::Written, crate::snapshots::WriteError>,
    (u64, u64),
);

fn digest(bytes: &[u8]) -> Vec<u8> {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes).to_vec()
}

/// Whether a logged message is key material (a grant, a rotation or a revocation).
fn is_key_material(e: &LogEntry) -> bool {
    hru_envelope::decode_header(&e.payload).is_ok_and(|h| {
        matches!(
            h.event_type,
            EventType::KeyGranted | EventType::KeyRotated | EventType::KeyRevoked
        )
    })
}

impl Service {
    /// Reach the state the log implies before anything live is evaluated: from the newest
    /// usable snapshot and the inputs after its cut, or from every input when there is none.
    /// The whole view is read (grants, key events and the breaches already logged); of the
    /// position stream only what follows the cut.
    async fn start(&mut self, positions: &PositionLog) -> Result<(), GeofenceError> {
        // The view first holds what the log held: a fitting or zone it has not yet copied would
        // otherwise be read after the positions stored later, and judged against them late.
        if !self.log.reader().wait_caught_up(VIEW_CATCH_UP).await? {
            tracing::warn!(after = ?VIEW_CATCH_UP, "the party's view still lags the log; rebuilding from what it holds");
        }
        let mut events: Vec<LogEntry> = self.log.reader().replay(1, &[]).await?.try_collect().await?;
        // Grants and key events first, in log order, through the read path: every other
        // envelope is then checked against the directory as the log's own key events amend it.
        self.read_key_material(&events);
        let cut = self.restore(&mut events, positions).await?;
        let next_event = events.last().map_or(1, |e| e.sequence + 1);
        let (from_event, from_position) = cut.unwrap_or((1, 1));
        self.stats.restored.set(i64::from(cut.is_some()));
        let stored: Vec<LogEntry> = positions
            .replay_partition(from_position, self.partition)
            .await?
            .try_filter(|e| futures::future::ready(!e.subject.is_position_claim()))
            .try_collect()
            .await?;
        self.stats
            .replayed_positions
            .set(i64::try_from(stored.len()).unwrap_or(i64::MAX));
        for e in stored.iter().filter(|e| is_key_material(e)) {
            self.keep_position_keys(e);
            if let Err(refusal) = self.read.read(&incoming(e)) {
                self.refused(&refusal);
            }
        }
        // The breaches already logged are known before anything is decided, and the
        // monitoring lapses still open.
        let now = jiff::Timestamp::now().as_millisecond();
        for e in &events {
            if let Ok(h) = hru_envelope::decode_header(&e.payload)
                && h.event_type == EventType::TagBreach
                && h.producer.party == self.party
            {
                match self.read.check(&incoming(e)) {
                    Ok(v) => {
                        let opened = self.read.open(&v);
                        if let Some(id) = logged_id(&opened) {
                            self.logged.insert(id);
                        }
                        if let Some(b) = logged_breach(&opened)
                            && b.kind == pb::BreachKind::MonitoringLapsed
                        {
                            match b.state {
                                pb::BreachState::Opened => self.coverage.lapsed_before(
                                    &b.tag_id,
                                    v.header.case_id,
                                    b.breach_id,
                                    b.opened_at_ms,
                                    now,
                                ),
                                _ => self.coverage.restored_before(&b.tag_id, b.breach_id),
                            }
                        }
                    }
                    Err(refusal) => self.refused(&refusal),
                }
            }
        }
        // The inputs after the cut, in recorded order (this service's own breaches are not).
        let tail = events.iter().filter(|e| e.sequence >= from_event);
        let mut merged: Vec<(i64, u8, u64, VerifiedEnvelope)> = Vec::new();
        for (source, entries) in [(0u8, tail.collect::<Vec<_>>()), (1u8, stored.iter().collect())] {
            for e in entries.into_iter().filter(|e| !is_key_material(e)) {
                match self.read.check(&incoming(e)) {
                    Ok(v) => {
                        let h = &v.header;
                        if !(h.event_type == EventType::TagBreach && h.producer.party == self.party) {
                            merged.push((v.header.recorded_at_ms, source, e.sequence, v));
                        }
                    }
                    Err(refusal) => self.refused(&refusal),
                }
            }
        }
        merged.sort_by_key(|(t, source, seq, _)| (*t, *source, *seq));
        for (.., v) in &merged {
            if v.header.event_type.is_public() {
                let inputs = self.inputs.public(v);
                self.apply(&inputs).await?;
            } else {
                let opened = self.read.open(v);
                self.feed(&opened).await?;
            }
        }
        self.next_event = next_event;
        if let Some(e) = events.last() {
            self.last_event = Some(Seen::of(e));
        }
        self.next_position = stored.last().map_or(from_position, |e| e.sequence + 1);
        if let Some(e) = stored.last() {
            self.last_position = Some(Seen::of(e));
        }
        self.forget_expired_positions();
        // Coverage is watched from now on: each fitted tag has the lapse time to be heard.
        let now = jiff::Timestamp::now().as_millisecond();
        let fitted: Vec<_> = self.state.fitted_tags().map(|(t, c)| (t.clone(), c)).collect();
        // A lapse left open by a tag removed while the service was down closes now.
        let names = fitted.iter().map(|(t, _)| t.clone()).collect();
        let closed = self.coverage.keep_only(&names, now);
        for (tag, case) in fitted {
            self.coverage.watch(&tag, case, now);
        }
        self.live = true;
        if !closed.is_empty() {
            self.handle(closed.into_iter().map(Action::Breach).collect()).await?;
        }
        tracing::info!(
            events = events.len(),
            positions = stored.len(),
            from_snapshot = cut.is_some(),
            zones = self.state.zone_count(),
            tags = self.state.tag_count(),
            open = self.state.open_episodes(),
            "state rebuilt from the log"
        );
        Ok(())
    }

    /// Take key material (grants, rotations, revocations) in through the read path.
    fn read_key_material(&mut self, entries: &[LogEntry]) {
        for e in entries.iter().filter(|e| is_key_material(e)) {
            if let Err(refusal) = self.read.read(&incoming(e)) {
                self.refused(&refusal);
            }
        }
    }

    /// Take in the newest usable snapshot: its cut, or `None` when the service must replay
    /// everything. `events` is the whole view as read; when the snapshot's cut lies past it
    /// (the view lags the log, as after a broker restart) the view is read on for up to 30 s.
    /// A snapshot whose last messages before the cut are not the ones these streams hold there
    /// was taken on other streams and is not used.
    async fn restore(
        &mut self,
        events: &mut Vec<LogEntry>,
        positions: &PositionLog,
    ) -> Result<Option<(u64, u64)>, GeofenceError> {
        let (first_position, last_position) = positions.bounds().await?;
        let config = *self.state.config();
        let periods = self.periods.lock().await.keys().clone();
        let Some(snapshots) = self.snapshots.as_mut() else {
            return Ok(None);
        };
        let loaded = snapshots
            .load(&periods, self.read.directory(), &self.config_digest, |s| {
                if s.next_position > last_position + 1 {
                    return Err(format!(
                        "its cut (position {}) is past the end of HRU_POSITIONS ({last_position})",
                        s.next_position
                    ));
                }
                let state =
                    State::from_snapshot(config, &s.engine.clone().unwrap_or_default()).map_err(|e| e.to_string())?;
                let inputs = Inputs::from_snapshot(&s.gateways).map_err(|e| e.to_string())?;
                Ok((s, state, inputs))
            })
            .await;
        let loaded = match loaded {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(cause = %e, "snapshots not read; replaying every input");
                return Ok(None);
            }
        };
        for r in &loaded.rejected {
            self.stats.snapshots_rejected.inc();
            tracing::warn!(manifest = r.sequence, reason = %r.reason, "snapshot passed over");
        }
        let Some((snapshot, state, inputs)) = loaded.snapshot else {
            return Ok(None);
        };
        let refuse = |service: &mut Self, why: String| {
            service.stats.snapshots_rejected.inc();
            tracing::warn!(reason = %why, "snapshot not used; replaying every input");
            Ok(None)
        };
        // The view reaches the cut, and holds there what the snapshot saw.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let reached = |events: &Vec<LogEntry>| events.last().map_or(0, |e| e.sequence) >= snapshot.last_event_sequence;
        while !reached(events) {
            if tokio::time::Instant::now() > deadline {
                return refuse(
                    self,
                    format!(
                        "its cut (event {}) is past this view's end after 30 s",
                        snapshot.next_event
                    ),
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            let from = events.last().map_or(1, |e| e.sequence + 1);
            let more: Vec<LogEntry> = self.log.reader().replay(from, &[]).await?.try_collect().await?;
            self.read_key_material(&more);
            events.extend(more);
        }
        if snapshot.last_event_sequence > 0 {
            let seen = events
                .binary_search_by_key(&snapshot.last_event_sequence, |e| e.sequence)
                .ok()
                .map(|i| digest(&events[i].payload));
            if seen.as_deref() != Some(snapshot.last_event_digest.as_slice()) {
                return refuse(
                    self,
                    format!(
                        "the view does not hold at event {} what it saw",
                        snapshot.last_event_sequence
                    ),
                );
            }
        }
        // The position stream holds there what it saw (unless that has expired since).
        if snapshot.last_position_sequence >= first_position.max(1) {
            let mut at = positions.replay(snapshot.last_position_sequence).await?;
            let seen = at
                .try_next()
                .await?
                .filter(|e| e.sequence == snapshot.last_position_sequence)
                .map(|e| digest(&e.payload));
            if seen.as_deref() != Some(snapshot.last_position_digest.as_slice()) {
                return refuse(
                    self,
                    format!(
                        "HRU_POSITIONS does not hold at {} what it saw",
                        snapshot.last_position_sequence
                    ),
                );
            }
        }
        self.state = state;
        // The restored inputs judge this partition's tags only, as the ones they replace did.
        self.inputs = inputs.owning(self.partition, self.partitions);
        for m in &snapshot.position_key_events {
            let entry = LogEntry {
                sequence: m.sequence,
                subject: hru_broker::Subject::from_wire(m.subject.clone()),
                payload: m.payload.clone().into(),
                stored: hru_broker::StoredAt::Exactly(m.stored_ms),
            };
            self.keep_position_keys(&entry);
            if let Err(refusal) = self.read.read(&incoming(&entry)) {
                self.refused(&refusal);
            }
        }
        self.last_event = (snapshot.last_event_sequence > 0)
            .then(|| Seen::digested(snapshot.last_event_sequence, snapshot.last_event_digest.clone()));
        self.last_position = (snapshot.last_position_sequence > 0)
            .then(|| Seen::digested(snapshot.last_position_sequence, snapshot.last_position_digest.clone()));
        self.snapshot_cut = (snapshot.next_event, snapshot.next_position);
        tracing::info!(
            slot = loaded.slot,
            next_event = snapshot.next_event,
            next_position = snapshot.next_position,
            taken_at_ms = snapshot.taken_at_ms,
            "state restored from a snapshot"
        );
        Ok(Some(self.snapshot_cut))
    }

    /// Keep a key event read from the position stream, for the snapshots.
    fn keep_position_keys(&mut self, e: &LogEntry) {
        if !is_key_material(e) || self.position_keys.iter().any(|k| k.sequence == e.sequence) {
            return;
        }
        let stored_ms = match e.stored {
            hru_broker::StoredAt::Exactly(ms) => ms,
            _ => jiff::Timestamp::now().as_millisecond(),
        };
        self.position_keys.push(pb::LoggedMessage {
            sequence: e.sequence,
            subject: e.subject.to_string(),
            payload: e.payload.to_vec(),
            stored_ms,
        });
    }

    /// Forget positions past their retention: the engine's latest fixes, and the position
    /// stream's key events kept for snapshots. A state that forgot something is snapshotted
    /// again even if it read nothing new.
    fn forget_expired_positions(&mut self) {
        let cutoff = self.retention_start();
        let forgotten = self.state.forget_positions_before(cutoff);
        let kept = self.position_keys.len();
        self.position_keys.retain(|k| k.stored_ms >= cutoff);
        if forgotten > 0 || kept != self.position_keys.len() {
            self.forgotten = true;
            tracing::info!(forgotten, "positions past their retention forgotten");
        }
    }

    /// The oldest time a position may be from and still be kept, Unix ms.
    fn retention_start(&self) -> i64 {
        let max_age = i64::try_from(self.positions_max_age.as_millis()).unwrap_or(i64::MAX);
        jiff::Timestamp::now().as_millisecond().saturating_sub(max_age)
    }

    /// Start writing a snapshot of the state, off the loop that evaluates fixes, if it has read
    /// anything (or forgotten positions) since the last one and no write is under way. The
    /// snapshot is sealed to the period key of the oldest month a kept position may be from.
    async fn snapshot(&mut self) {
        self.reap(false).await;
        if self.writing.is_some() {
            return;
        }
        self.forget_expired_positions();
        let cut = (self.next_event, self.next_position);
        if cut == self.snapshot_cut && !self.forgotten {
            return;
        }
        let Some(mut snapshots) = self.snapshots.take() else {
            return;
        };
        let periods = self.periods.lock().await.keys().clone();
        let Some(month) = snapshots.seal_month(&periods, self.retention_start()) else {
            self.stats.snapshots_failed.inc();
            tracing::warn!("no period key of the positions' class to seal a snapshot to; not written");
            self.snapshots = Some(snapshots);
            return;
        };
        let (last_event_sequence, last_event_digest) = self.last_event.as_ref().map(Seen::parts).unwrap_or_default();
        let (last_position_sequence, last_position_digest) =
            self.last_position.as_ref().map(Seen::parts).unwrap_or_default();
        let snapshot = pb::GeofenceSnapshot {
            format: crate::snapshots::FORMAT,
            config_digest: self.config_digest.to_vec(),
            next_event: cut.0,
            next_position: cut.1,
            taken_at_ms: jiff::Timestamp::now().as_millisecond(),
            engine: Some(self.state.to_snapshot()),
            gateways: self.inputs.to_snapshot(),
            position_key_events: self.position_keys.clone(),
            last_event_sequence,
            last_event_digest,
            last_position_sequence,
            last_position_digest,
        };
        let secrets = self.secrets.clone();
        self.forgotten = false;
        self.writing = Some(tokio::spawn(async move {
            let written = snapshots.write(&snapshot, month, &periods, &secrets).await;
            (snapshots, written, cut)
        }));
    }

    /// Collect a snapshot write that has finished (with `wait`, wait for it).
    async fn reap(&mut self, wait: bool) {
        let Some(handle) = self.writing.take() else { return };
        if !wait && !handle.is_finished() {
            self.writing = Some(handle);
            return;
        }
        match handle.await {
            Ok((snapshots, written, cut)) => {
                self.snapshots = Some(snapshots);
                match written {
                    Ok(w) => {
                        self.stats.snapshots.inc();
                        self.snapshot_cut = cut;
                        tracing::debug!(
                            slot = w.slot,
                            bytes = w.bytes,
                            chunks = w.chunks,
                            next_event = cut.0,
                            next_position = cut.1,
                            "snapshot written"
                        );
                    }
                    Err(e) => {
                        self.stats.snapshots_failed.inc();
                        self.forgotten = true;
                        tracing::warn!(cause = %e, "snapshot not written; the next restart replays more");
                    }
                }
            }
            Err(e) => {
                self.stats.snapshots_failed.inc();
                tracing::error!(cause = %e, "the snapshot writer failed; no more snapshots until restart");
            }
        }
    }
}

/// The last message read from a stream before the cut: its bytes, hashed when a snapshot
/// names it, or the digest a restored snapshot named.
enum Seen {
    Bytes(u64, bytes::Bytes),
    Digest(u64, Vec<u8>),
}

impl Seen {
    fn of(e: &LogEntry) -> Self {
        Self::Bytes(e.sequence, e.payload.clone())
    }

    fn digested(sequence: u64, digest: Vec<u8>) -> Self {
        Self::Digest(sequence, digest)
    }

    /// (sequence, SHA-256 of the bytes).
    fn parts(&self) -> (u64, Vec<u8>) {
        match self {
            Self::Bytes(seq, bytes) => (*seq, digest(bytes)),
            Self::Digest(seq, d) => (*seq, d.clone()),
        }
    }
}

/// Evaluate what the partition's consumer delivers (first `waiting`, delivered while the state
/// was rebuilt), and poll the zone, rule and
/// tag events, snapshotting the state every `snapshot_every` (and once more on a clean stop),
/// until `stop`, or until another instance is found to hold the partition.
async fn follow(
    service: &mut Service,
    feed: &mut hru_log::PartitionFeed,
    waiting: Vec<hru_log::Delivered>,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<Followed, GeofenceError> {
    let mut poll = tokio::time::interval(Duration::from_millis(200));
    let mut sweep = tokio::time::interval_at(tokio::time::Instant::now() + RETENTION_SWEEP, RETENTION_SWEEP);
    let every = service.snapshot_every.unwrap_or(Duration::from_secs(3600));
    let mut snapshot = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    snapshot.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heartbeat = tokio::time::interval(service.heartbeat_every);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut clock = tokio::time::interval(Duration::from_secs(1));
    clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut held = Held::default();
    let mut lost = false;
    for d in waiting {
        if !held.delivered(&d) {
            lost = true;
            break;
        }
        service.evaluate(&d).await?;
    }
    let followed = loop {
        if lost {
            break Followed::Lost;
        }
        tokio::select! {
            _ = stop.changed() => break Followed::Stopped,
            _ = sweep.tick() => {
                if let Err(e) = service.sweep().await {
                    tracing::warn!(cause = %e, "expired keys not destroyed; trying again later");
                }
            }
            _ = snapshot.tick(), if service.snapshot_every.is_some() => service.snapshot().await,
            _ = heartbeat.tick() => service.beat(),
            _ = clock.tick() => {
                // Lapses are raised only while this instance still holds the partition: a
                // standby's stale state must not speak for tags another instance watches.
                if let Some(pin) = &held.pin {
                    match feed.holds(pin).await {
                        Ok(true) => held.confirmed = Some(std::time::Instant::now()),
                        Ok(false) => break Followed::Lost,
                        Err(e) => tracing::warn!(partition = service.partition, cause = %e, "partition pin not checked"),
                    }
                }
                if !held.still(feed).await {
                    break Followed::Lost;
                }
                service.tick().await?;
                service.reap(false).await;
                service.count_state();
            }
            d = feed.next() => {
                let d = match d {
                    Some(Ok(d)) => d,
                    Some(Err(e)) => {
                        tracing::warn!(partition = service.partition, cause = %e, "partition pull failed; pulling on");
                        continue;
                    }
                    None => break Followed::Lost,
                };
                if !held.delivered(&d) || !held.still(feed).await {
                    break Followed::Lost;
                }
                service.evaluate(&d).await?;
            }
            _ = poll.tick() => {
                let mut entries = service.log.reader().replay(service.next_event, &[]).await?;
                while let Some(e) = entries.try_next().await? {
                    service.read(&e).await?;
                    service.next_event = e.sequence + 1;
                    service.last_event = Some(Seen::of(&e));
                }
                service.count_state();
            }
        }
    };
    if matches!(followed, Followed::Stopped) {
        // A clean stop: the write under way, then one of the state as it is.
        service.reap(true).await;
        service.snapshot().await;
    }
    service.reap(true).await;
    Ok(followed)
}

/// What this instance was delivered of its partition: the consumer's deliveries run on without
/// a gap while no other instance is delivered any.
#[derive(Default)]
struct Held {
    delivery: Option<u64>,
    pin: Option<String>,
    /// When the consumer last named this instance's pin as its own.
    confirmed: Option<std::time::Instant>,
}

impl Held {
    /// Whether this instance may still act for the partition: its pin was confirmed within the
    /// pin timeout, or is confirmed now. After a pause (a frozen host, SIGSTOP) the pin may
    /// have moved, and what was delivered before must not be acted on: a failed check counts
    /// as lost.
    async fn still(&mut self, feed: &hru_log::PartitionFeed) -> bool {
        let fresh = self
            .confirmed
            .is_some_and(|t| t.elapsed() < hru_broker::stream::PARTITION_PIN_TIMEOUT);
        if fresh {
            return true;
        }
        let Some(pin) = self.pin.clone() else { return true };
        match feed.holds(&pin).await {
            Ok(true) => {
                self.confirmed = Some(std::time::Instant::now());
                true
            }
            Ok(false) => false,
            Err(e) => {
                tracing::warn!(partition = feed.partition, cause = %e, "partition pin not confirmed after a pause; dropping the partition");
                false
            }
        }
    }

    /// Take in a delivery; false when another instance was delivered something since the last.
    fn delivered(&mut self, d: &hru_log::Delivered) -> bool {
        if self.delivery.is_some_and(|last| d.delivery != last + 1) {
            return false;
        }
        self.delivery = Some(d.delivery);
        if d.pin.is_some() {
            self.pin.clone_from(&d.pin);
        }
        true
    }
}

impl Service {
    /// Evaluate one delivered position message (one the state already covers is passed over).
    async fn evaluate(&mut self, d: &hru_log::Delivered) -> Result<(), GeofenceError> {
        let entry = &d.entry;
        self.pending = d.pending;
        if entry.sequence >= self.next_position && !entry.subject.is_position_claim() {
            self.keep_position_keys(entry);
            self.batch_read_ms = Some(jiff::Timestamp::now().as_millisecond());
            self.read(entry).await?;
            self.next_position = entry.sequence + 1;
            self.last_position = Some(Seen::of(entry));
        }
        Ok(())
    }
}
