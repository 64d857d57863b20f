//! The geofence engine: pure code. `evaluate(state, input) -> (state, actions)`; no I/O and no
//! clock reads (time comes in with the input), so the same inputs always give the same breaches
//! and a restart that replays its inputs reaches the same state.
//!
//! Rules, per tag:
//! - exclusion zones (optionally scheduled): a breach opens when the fix's accuracy circle lies
//!   inside the zone; a circle that straddles the boundary is only *possible*;
//! - inclusion zones (curfews, windows in Europe/London): a breach opens when the accuracy
//!   circle lies outside the zone during a window;
//! - victim proximity: the distance to the latest fresh victim fix, allowing for both
//!   accuracies: a warning when they may be within the outer distance, a breach when they are
//!   certainly within the inner; a stale victim fix is reported, never used;
//! - device: strap tamper, battery low, no GPS fix for T, no communication for T (driven by
//!   the watermark the gateway's heartbeats carry).
//!
//! A breach closes only after N consecutive fixes (or S seconds of fixes) clear of the boundary
//! by the exit buffer: GPS drift along an edge raises one episode, not a storm. Each episode's
//! id derives from (tag, rule, first fix), so a replay raises the same ids. Fixes are evaluated
//! in device-time order per tag; a fix received long after it was taken marks its breaches
//! late, and a fix older than one already evaluated is still checked, never dropped.

use std::collections::{BTreeMap, HashMap};

use hru_domain::{CaseId, DeviceId, TagId};
use hru_wire::v1 as pb;
use rstar::{AABB, RTree, RTreeObject};
use sha2::{Digest as _, Sha256};

use hru_domain::zone::{Zone, distance_m};

mod evidence;
mod snapshot;
pub use evidence::{EvidenceError, Recorded, ReplayError, find, replay};
pub use snapshot::{ENGINE_LOGIC, StateError, config_digest, partitioned_config_digest};

/// Tunable thresholds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Config {
    /// Consecutive clear fixes that close a breach.
    pub exit_fixes: u32,
    /// Or: seconds of clear fixes that close a breach.
    pub exit_seconds: i64,
    /// A fix received this long after it was taken is late.
    pub late_after_ms: i64,
    /// Battery at or below this is low.
    pub battery_low_percent: u32,
    /// No GPS fix for this long raises no-fix.
    pub no_fix_after_ms: i64,
    /// No message at all for this long raises no-communication.
    pub no_comm_after_ms: i64,
    /// An open breach is re-reported (UPDATED) at most this often.
    pub update_every_ms: i64,
    /// Proximity exit buffer, metres.
    pub proximity_exit_m: f64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            exit_fixes: 3,
            exit_seconds: 60,
            late_after_ms: 60_000,
            battery_low_percent: 15,
            no_fix_after_ms: 5 * 60_000,
            no_comm_after_ms: 15 * 60_000,
            update_every_ms: 60_000,
            proximity_exit_m: 25.0,
        }
    }
}

/// One position fix of a device.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fix {
    /// Device-assigned sequence.
    pub seq: u64,
    /// Device time, Unix ms.
    pub device_ms: i64,
    /// Gateway receive time, Unix ms.
    pub received_ms: i64,
    /// `(lat, lon)`; none without a GPS fix.
    pub position: Option<(f64, f64)>,
    /// Accuracy radius, metres.
    pub accuracy_m: f64,
    /// Battery percent.
    pub battery: u32,
    /// Strap tampered.
    pub tampered: bool,
    /// The PositionBatch event that carried it (nil if not known).
    pub batch: uuid::Uuid,
}

/// A device's latest fix with a position, as the engine keeps it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Seen {
    /// Device sequence.
    pub seq: u64,
    /// Device time, Unix ms.
    pub device_ms: i64,
    /// `(lat, lon)`.
    pub position: (f64, f64),
    /// Accuracy radius, metres.
    pub accuracy_m: f64,
    /// The PositionBatch event that carried it (nil if not known).
    pub batch: uuid::Uuid,
}

impl Fix {
    /// A fix from its wire form, carried by the batch event `batch` (nil if not known).
    pub fn from_wire(f: &pb::PositionFix, batch: uuid::Uuid) -> Self {
        Self {
            seq: f.fix_seq,
            device_ms: f.device_time_ms,
            received_ms: f.received_at_ms,
            position: f.position.as_ref().map(|p| (p.lat, p.lon)),
            accuracy_m: f.accuracy_m.max(0.0),
            battery: f.battery_percent,
            tampered: f.strap == pb::StrapState::Tampered as i32,
            batch,
        }
    }

    /// What the engine keeps of it, when it has a position.
    fn seen(&self) -> Option<Seen> {
        self.position.map(|position| Seen {
            seq: self.seq,
            device_ms: self.device_ms,
            position,
            accuracy_m: self.accuracy_m,
            batch: self.batch,
        })
    }
}

/// A proximity rule as the engine holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Proximity {
    /// The rule.
    pub rule: hru_domain::ProximityRule,
    /// Its case.
    pub case: Option<CaseId>,
    /// Version (how many times it was set).
    pub version: u32,
}

/// The device a batch of fixes comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Device {
    /// A monitored person's tag.
    Tag(TagId),
    /// A victim's paired alert device.
    Victim(DeviceId),
}

/// What the engine is told.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A zone defined or replaced.
    Zone(Box<Zone>),
    /// A zone revoked (its open breaches close).
    ZoneRevoked {
        /// Zone id.
        zone: uuid::Uuid,
        /// When, Unix ms.
        at_ms: i64,
    },
    /// A proximity rule set or replaced.
    Proximity(Box<Proximity>),
    /// A tag fitted (pairs it with its case and victim device).
    TagFitted {
        /// Case.
        case: Option<CaseId>,
        /// The tag event.
        tag: hru_domain::Tag,
    },
    /// A tag removed: no more device alerts for it.
    TagRemoved {
        /// Tag id.
        tag: TagId,
    },
    /// Fixes of one device.
    Fixes {
        /// The device: a subject's tag or a victim's device.
        device: Device,
        /// Its fixes.
        fixes: Vec<Fix>,
    },
    /// Event time has reached here for every device (the gateway's heartbeat).
    Watermark {
        /// Unix ms.
        at_ms: i64,
    },
}

/// What the engine decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// A breach episode opened, was updated or closed: append a TagBreach.
    Breach(BreachUpdate),
    /// Warn the victim now (proximity and exclusion breaches, in parallel with the control room).
    VictimAlert {
        /// Breach episode.
        breach_id: uuid::Uuid,
        /// The victim's device.
        victim_device: DeviceId,
        /// Breach kind.
        kind: pb::BreachKind,
        /// The tag.
        tag: TagId,
        /// Distance, metres.
        distance_m: f64,
    },
    /// A fix's accuracy circle straddles a boundary: possibly in breach, not confirmed.
    Possible {
        /// The tag.
        tag: TagId,
        /// The zone or rule.
        rule: uuid::Uuid,
        /// The fix.
        fix_seq: u64,
    },
    /// The victim's latest fix is too old to judge proximity.
    StaleVictimFix {
        /// The tag.
        tag: TagId,
        /// The proximity rule.
        rule: uuid::Uuid,
        /// Age of the latest victim fix at the tag's fix, ms (none: never had one).
        age_ms: Option<i64>,
    },
}

/// Why a breach decision was made: enough to replay it to the same answer — the thresholds,
/// the tag's state before the input that decided it, and that input.
#[derive(Debug, Clone, PartialEq)]
pub struct Evidence {
    /// The engine thresholds it was decided under (none for coverage, not an engine decision).
    pub thresholds: Option<Config>,
    /// Zone or rule version in force at the decision (proximity: how many times it was set).
    pub rule_version: u32,
    /// The decision in words, e.g. "closed: clear by the exit buffer for 3 fixes, 40 s".
    pub hysteresis: String,
    /// The tag's state before the input.
    pub prior: Prior,
    /// The input that decided it.
    pub cause: Cause,
    /// SHA-256 of the zone's or rule's definition in force (none for device conditions).
    pub rule_digest: Option<[u8; 32]>,
    /// The decision logic it was decided under ([`ENGINE_LOGIC`]).
    pub engine_logic: u32,
}

/// A tag's state before the input that decided a breach update (the hysteresis state).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Prior {
    /// Latest device time evaluated, Unix ms.
    pub last_device_ms: i64,
    /// Latest message, device time, Unix ms.
    pub last_comm_ms: i64,
    /// Latest GPS fix, device time, Unix ms.
    pub last_gps_ms: i64,
    /// The tag's latest fix with a position.
    pub tag_fix: Option<Seen>,
    /// The victim device's latest fix (proximity rules).
    pub victim_fix: Option<Seen>,
    /// The episode as it stood (none when the input opened it).
    pub episode: Option<OpenEpisode>,
}

/// An open episode as it stood before a decision.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OpenEpisode {
    /// First fix, device time, Unix ms.
    pub opened_ms: i64,
    /// First fix's sequence.
    pub first_fix: u64,
    /// Last report, device time, Unix ms.
    pub last_report_ms: i64,
    /// Consecutive clear fixes.
    pub clear_fixes: u32,
    /// Clear since, device time, Unix ms.
    pub clear_since_ms: Option<i64>,
    /// Found late.
    pub late: bool,
    /// Zone or rule version it opened under.
    pub rule_version: u32,
}

/// The input that decided a breach update.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cause {
    /// A fix of the tag.
    TagFix(Fix),
    /// A fix of the victim's device.
    VictimFix(Fix),
    /// Event time reached here, Unix ms.
    Watermark(i64),
    /// The zone was revoked then, Unix ms.
    ZoneRevoked(i64),
    /// The geofence's own clock read then (coverage, not an engine decision), Unix ms.
    Clock(i64),
}

/// One TagBreach to append.
#[derive(Debug, Clone, PartialEq)]
pub struct BreachUpdate {
    /// Episode id.
    pub breach_id: uuid::Uuid,
    /// The case it belongs to.
    pub case: Option<CaseId>,
    /// Tag.
    pub tag: TagId,
    /// Kind.
    pub kind: pb::BreachKind,
    /// Opened, updated or closed.
    pub state: pb::BreachState,
    /// Zone or rule id.
    pub rule_id: uuid::Uuid,
    /// The episode's first fix, device time.
    pub opened_at_ms: i64,
    /// This decision's fix (or watermark), device time.
    pub observed_at_ms: i64,
    /// Position of that fix.
    pub position: Option<(f64, f64)>,
    /// Its accuracy.
    pub accuracy_m: f64,
    /// Distance to the boundary or the victim, metres.
    pub distance_m: f64,
    /// Found late (store and forward, or out of order).
    pub late: bool,
    /// What it rests on (boxed: it is most of the update's size).
    pub evidence: Box<Evidence>,
}

impl BreachUpdate {
    /// A unique, replay-stable id for this update (the log's `Nats-Msg-Id`): the episode id for
    /// the opening, plus the state and observation time for later updates.
    pub fn message_id(&self) -> String {
        match self.state {
            pb::BreachState::Opened => self.breach_id.to_string(),
            other => format!("{}-{}-{}", self.breach_id, other.as_str_name(), self.observed_at_ms),
        }
    }

    /// The wire section.
    pub fn core(&self) -> pb::BreachCore {
        pb::BreachCore {
            breach_id: self.breach_id.as_bytes().to_vec(),
            tag_id: self.tag.to_string(),
            kind: self.kind as i32,
            state: self.state as i32,
            rule_id: self.rule_id.as_bytes().to_vec(),
            opened_at_ms: self.opened_at_ms,
            observed_at_ms: self.observed_at_ms,
            position: self.position.map(|(lat, lon)| pb::LatLon { lat, lon }),
            accuracy_m: self.accuracy_m,
            distance_m: self.distance_m,
            late: self.late,
            evidence: Some(self.evidence.to_wire()),
        }
    }
}

/// A rule of a tag: which zone or proximity rule, or which device condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum RuleKey {
    Zone(uuid::Uuid),
    ProximityWarning(uuid::Uuid),
    Proximity(uuid::Uuid),
    Device(pb::BreachKind),
}

#[derive(Debug, Clone, PartialEq)]
struct Episode {
    breach_id: uuid::Uuid,
    kind: pb::BreachKind,
    rule_id: uuid::Uuid,
    rule_version: u32,
    opened_ms: i64,
    first_fix: u64,
    last_report_ms: i64,
    clear_fixes: u32,
    clear_since_ms: Option<i64>,
    late: bool,
}

/// What an episode opens with: its rule and its first fix (or watermark).
struct Opening {
    key: RuleKey,
    kind: pb::BreachKind,
    rule_id: uuid::Uuid,
    rule_version: u32,
    seq: u64,
    at_ms: i64,
    late: bool,
}

impl Episode {
    /// As it stands, for evidence.
    fn as_open(&self) -> OpenEpisode {
        OpenEpisode {
            opened_ms: self.opened_ms,
            first_fix: self.first_fix,
            last_report_ms: self.last_report_ms,
            clear_fixes: self.clear_fixes,
            clear_since_ms: self.clear_since_ms,
            late: self.late,
            rule_version: self.rule_version,
        }
    }

    /// A new episode of `tag`; its id derives from (tag, rule, first fix).
    fn open(tag: &TagId, o: Opening) -> Self {
        Self {
            breach_id: episode_id(tag.as_str(), o.key, o.seq, o.at_ms),
            kind: o.kind,
            rule_id: o.rule_id,
            rule_version: o.rule_version,
            opened_ms: o.at_ms,
            first_fix: o.seq,
            last_report_ms: o.at_ms,
            clear_fixes: 0,
            clear_since_ms: None,
            late: o.late,
        }
    }
}

/// One tag's state.
#[derive(Debug, Clone, Default, PartialEq)]
struct TagState {
    case: Option<CaseId>,
    victim_device: Option<DeviceId>,
    fitted: bool,
    last_device_ms: i64,
    last_comm_ms: i64,
    last_gps_ms: i64,
    last_fix: Option<Seen>,
    open: BTreeMap<RuleKey, Episode>,
    possible: BTreeMap<RuleKey, u64>,
    /// Closed episodes: (rule, opened, closed), the latest few per tag.
    history: Vec<(RuleKey, i64, i64)>,
    stale_reported: BTreeMap<uuid::Uuid, bool>,
}

const HISTORY: usize = 64;

impl TagState {
    /// What evidence records of it before an input.
    fn before(&self) -> Before {
        Before {
            last_device_ms: self.last_device_ms,
            last_comm_ms: self.last_comm_ms,
            last_gps_ms: self.last_gps_ms,
            last_fix: self.last_fix,
        }
    }
}

/// A tag's times and latest fix before an input.
#[derive(Debug, Clone, Copy, Default)]
struct Before {
    last_device_ms: i64,
    last_comm_ms: i64,
    last_gps_ms: i64,
    last_fix: Option<Seen>,
}

/// What the decisions an input leads to rest on: the tag's state before it, the victim's
/// latest fix before it (when the input is the victim's own fix), and the input.
#[derive(Debug, Clone, Copy)]
struct Ctx {
    before: Before,
    victim_before: Option<Option<Seen>>,
    cause: Cause,
}

impl Ctx {
    /// The prior state evidence records, with the victim's fix and the episode as they stood.
    fn prior(&self, victim_fix: Option<Seen>, episode: Option<OpenEpisode>) -> Prior {
        Prior {
            last_device_ms: self.before.last_device_ms,
            last_comm_ms: self.before.last_comm_ms,
            last_gps_ms: self.before.last_gps_ms,
            tag_fix: self.before.last_fix,
            victim_fix,
            episode,
        }
    }
}

/// Why an update is reported: in words, and what it rests on.
struct Why {
    words: String,
    prior: Prior,
    cause: Cause,
    thresholds: Config,
    /// The zone or rule version in force at the decision.
    rule_version: u32,
    /// Its definition's digest.
    rule_digest: Option<[u8; 32]>,
}

/// SHA-256 of a zone's definition, as logged (its `ZoneCore`).
pub fn zone_digest(zone: &Zone) -> [u8; 32] {
    use prost::Message as _;
    Sha256::digest(pb::ZoneCore::from(&zone.definition).encode_to_vec()).into()
}

/// SHA-256 of a proximity rule's definition, as logged (its `ProximityCore`).
pub fn rule_digest(rule: &hru_domain::ProximityRule) -> [u8; 32] {
    use prost::Message as _;
    Sha256::digest(pb::ProximityCore::from(rule).encode_to_vec()).into()
}

/// A fast, non-cryptographic hasher for the engine's maps (keys are tag ids and zone ids from
/// authenticated inputs, so flooding is not a concern): multiply-rotate per 8 bytes.
#[derive(Default, Clone, Copy)]
struct FastHasher(u64);

impl std::hash::Hasher for FastHasher {
    fn finish(&self) -> u64 {
        // Fold the high bits down: the table indexes by the low bits.
        let x = (self.0 ^ (self.0 >> 31)).wrapping_mul(0x94_d0_49_bb_13_31_11_eb);
        x ^ (x >> 29)
    }
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
}

type FastMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<FastHasher>>;

#[derive(Debug, Clone, PartialEq)]
struct ZoneBox {
    bbox: AABB<[f64; 2]>,
    zone: uuid::Uuid,
}

impl RTreeObject for ZoneBox {
    type Envelope = AABB<[f64; 2]>;
    fn envelope(&self) -> Self::Envelope {
        self.bbox
    }
}

/// Beyond this many exclusion zones on one tag, its zones are searched through an R-tree
/// rather than scanned.
const SCAN_ZONES: usize = 32;

/// One tag's exclusion zones. A zone binds only its own tag, so a fix is judged against its
/// tag's few zones rather than searched for among every tag's: the boxes in zone-id order
/// (the order readings are reported in), and an R-tree of them once there are many.
#[derive(Debug, Clone, Default)]
struct TagZones {
    boxes: Vec<ZoneBox>,
    tree: Option<Box<RTree<ZoneBox>>>,
}

impl TagZones {
    fn insert(&mut self, b: ZoneBox) {
        let at = self.boxes.partition_point(|x| x.zone < b.zone);
        self.boxes.insert(at, b);
        self.reindex();
    }

    fn remove(&mut self, zone: uuid::Uuid) {
        self.boxes.retain(|b| b.zone != zone);
        self.reindex();
    }

    fn reindex(&mut self) {
        self.tree = (self.boxes.len() > SCAN_ZONES).then(|| Box::new(RTree::bulk_load(self.boxes.clone())));
    }

    /// Each zone whose box meets the box of `reach` degrees of latitude (and the same distance
    /// in longitude) around `(lat, lon)`, in zone-id order.
    fn meeting(&self, (lat, lon): (f64, f64), reach: f64, mut each: impl FnMut(uuid::Uuid)) {
        // Degrees of longitude per degree of latitude's distance; computed only for a zone in
        // the fix's band of latitude (most of a tag's fixes are nowhere near its zones).
        let lon_reach = || reach / lat.to_radians().cos().max(1e-6);
        match &self.tree {
            None => {
                let mut dlon = None;
                for b in &self.boxes {
                    let ([west, south], [east, north]) = (b.bbox.lower(), b.bbox.upper());
                    if !(south <= lat + reach && lat - reach <= north) {
                        continue;
                    }
                    let d = *dlon.get_or_insert_with(lon_reach);
                    if west <= lon + d && lon - d <= east {
                        each(b.zone);
                    }
                }
            }
            Some(tree) => {
                let d = lon_reach();
                let envelope = AABB::from_corners([lon - d, lat - reach], [lon + d, lat + reach]);
                let mut near: Vec<uuid::Uuid> = tree
                    .locate_in_envelope_intersecting(&envelope)
                    .map(|b| b.zone)
                    .collect();
                near.sort_unstable();
                near.into_iter().for_each(each);
            }
        }
    }
}

/// Everything the engine knows.
#[derive(Debug, Clone)]
pub struct State {
    config: Config,
    zones: FastMap<uuid::Uuid, Zone>,
    exclusion_by_tag: FastMap<TagId, TagZones>,
    inclusion_by_tag: FastMap<TagId, Vec<uuid::Uuid>>,
    proximity_by_tag: FastMap<TagId, Vec<uuid::Uuid>>,
    proximity_by_victim: FastMap<DeviceId, Vec<uuid::Uuid>>,
    rules: FastMap<uuid::Uuid, Proximity>,
    /// SHA-256 of each zone's and rule's definition in force (what evidence records), computed
    /// once when it is defined.
    digests: FastMap<uuid::Uuid, [u8; 32]>,
    tags: FastMap<TagId, TagState>,
    victims: FastMap<DeviceId, Seen>,
    watermark_ms: i64,
    scratch: Vec<Reading>,
}

/// Apply one input to a state: the new state and what to do.
pub fn evaluate(mut state: State, input: &Input) -> (State, Vec<Action>) {
    let actions = state.apply(input);
    (state, actions)
}

/// The id of an episode: (tag, rule, first fix).
fn episode_id(tag: &str, rule: RuleKey, first_fix: u64, at_ms: i64) -> uuid::Uuid {
    let mut h = Sha256::new();
    h.update(b"hru.breach.v1\0");
    h.update(tag.as_bytes());
    h.update([0]);
    h.update(format!("{rule:?}").as_bytes());
    h.update(first_fix.to_be_bytes());
    h.update(at_ms.to_be_bytes());
    let digest = h.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// A stable id for a device condition of a tag (the rule id of device breaches).
pub(crate) fn device_rule_id(tag: &str, kind: pb::BreachKind) -> uuid::Uuid {
    let digest = Sha256::digest(format!("hru.device-rule.v1\0{tag}\0{}", kind.as_str_name()));
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// Where a fix stands against a rule.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Verdict {
    /// In breach for certain.
    Breach,
    /// Could be either.
    Possible,
    /// Clear of the boundary by the exit buffer.
    ClearBeyondBuffer,
    /// Clear, but within the exit buffer.
    Clear,
}

/// A fix against a rule: the verdict and the distance to report.
#[derive(Debug, Clone, Copy)]
struct Reading {
    verdict: Verdict,
    distance_m: f64,
    version: u32,
    kind: pb::BreachKind,
    rule_id: uuid::Uuid,
}

impl State {
    /// An empty state.
    pub fn new(config: Config) -> Self {
        Self {
            config,
            zones: FastMap::default(),
            exclusion_by_tag: FastMap::default(),
            inclusion_by_tag: FastMap::default(),
            proximity_by_tag: FastMap::default(),
            proximity_by_victim: FastMap::default(),
            rules: FastMap::default(),
            digests: FastMap::default(),
            tags: FastMap::default(),
            victims: FastMap::default(),
            watermark_ms: 0,
            scratch: Vec::new(),
        }
    }

    /// The thresholds it evaluates under.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Zones known.
    pub fn zone_count(&self) -> usize {
        self.zones.len()
    }

    /// The tags fitted (not removed), with their cases.
    pub fn fitted_tags(&self) -> impl Iterator<Item = (&TagId, Option<CaseId>)> {
        self.tags.iter().filter(|(_, t)| t.fitted).map(|(tag, t)| (tag, t.case))
    }

    /// Tags known.
    pub fn tag_count(&self) -> usize {
        self.tags.len()
    }

    /// Open episodes, across tags.
    pub fn open_episodes(&self) -> usize {
        self.tags.values().map(|t| t.open.len()).sum()
    }

    /// Apply one input; what to do.
    pub fn apply(&mut self, input: &Input) -> Vec<Action> {
        let mut out = Vec::new();
        match input {
            Input::Zone(z) => self.define_zone((**z).clone(), &mut out),
            Input::ZoneRevoked { zone, at_ms } => self.revoke_zone(*zone, *at_ms, &mut out),
            Input::Proximity(p) => self.set_rule((**p).clone()),
            Input::TagFitted { case, tag } => {
                let t = self.tags.entry(tag.tag_id.clone()).or_default();
                t.case = *case;
                t.victim_device = tag.victim_device_id.clone();
                t.fitted = true;
                t.last_comm_ms = t.last_comm_ms.max(tag.at_ms);
                t.last_gps_ms = t.last_gps_ms.max(tag.at_ms);
                // The party's view may bring a fitting after the gateways' later batches:
                // event time may be past the tag's silence limits already, judged now rather
                // than at the next heartbeat.
                self.judge_silence(Some(&tag.tag_id), self.watermark_ms, &mut out);
            }
            Input::TagRemoved { tag } => {
                if let Some(t) = self.tags.get_mut(tag) {
                    t.fitted = false;
                }
            }
            Input::Fixes { device, fixes } => {
                let order = |f: &Fix| (f.device_ms, f.seq);
                if fixes.windows(2).all(|w| order(&w[0]) <= order(&w[1])) {
                    for f in fixes {
                        self.one_fix(device, f, &mut out);
                    }
                } else {
                    let mut sorted: Vec<&Fix> = fixes.iter().collect();
                    sorted.sort_by_key(|f| order(f));
                    for f in sorted {
                        self.one_fix(device, f, &mut out);
                    }
                }
            }
            Input::Watermark { at_ms } => self.watermark(*at_ms, &mut out),
        }
        out
    }

    fn one_fix(&mut self, device: &Device, f: &Fix, out: &mut Vec<Action>) {
        match device {
            Device::Victim(device) => self.victim_fix(device, f, out),
            Device::Tag(tag) => self.tag_fix(tag, f, out),
        }
    }

    fn define_zone(&mut self, zone: Zone, out: &mut Vec<Action>) {
        let replaced = self.zones.get(&zone.id).cloned();
        if let Some(old) = &replaced {
            self.unindex(old);
        }
        match zone.kind {
            pb::ZoneKind::Inclusion => self.inclusion_by_tag.entry(zone.tag.clone()).or_default().push(zone.id),
            _ => self.index_exclusion(&zone),
        }
        // A moved zone is re-judged at the tag's next fix; an open episode keeps its id.
        let _ = out;
        self.digests.insert(zone.id, zone_digest(&zone));
        self.zones.insert(zone.id, zone);
    }

    /// Index an exclusion zone under its tag.
    fn index_exclusion(&mut self, zone: &Zone) {
        self.exclusion_by_tag
            .entry(zone.tag.clone())
            .or_default()
            .insert(ZoneBox {
                bbox: zone.bbox,
                zone: zone.id,
            });
    }

    fn unindex(&mut self, zone: &Zone) {
        match zone.kind {
            pb::ZoneKind::Inclusion => {
                if let Some(v) = self.inclusion_by_tag.get_mut(&zone.tag) {
                    v.retain(|z| *z != zone.id);
                }
            }
            _ => {
                if let Some(zones) = self.exclusion_by_tag.get_mut(&zone.tag) {
                    zones.remove(zone.id);
                    if zones.boxes.is_empty() {
                        self.exclusion_by_tag.remove(&zone.tag);
                    }
                }
            }
        }
    }

    fn revoke_zone(&mut self, id: uuid::Uuid, at_ms: i64, out: &mut Vec<Action>) {
        let Some(zone) = self.zones.remove(&id) else {
            return;
        };
        self.digests.remove(&id);
        self.unindex(&zone);
        let thresholds = self.config;
        if let Some(t) = self.tags.get_mut(&zone.tag)
            && let Some(e) = t.open.remove(&RuleKey::Zone(id))
        {
            let ctx = Ctx {
                before: t.before(),
                victim_before: None,
                cause: Cause::ZoneRevoked(at_ms),
            };
            t.history.push((RuleKey::Zone(id), e.opened_ms, at_ms));
            out.push(Action::Breach(close(
                &zone.tag,
                t.case,
                &e,
                at_ms,
                None,
                0.0,
                0.0,
                Why {
                    words: "closed: zone revoked".into(),
                    prior: ctx.prior(None, Some(e.as_open())),
                    cause: ctx.cause,
                    thresholds,
                    rule_version: zone.version,
                    rule_digest: Some(zone_digest(&zone)),
                },
            )));
        }
    }

    fn set_rule(&mut self, mut p: Proximity) {
        let id = p.rule.rule_id;
        if let Some(old) = self.rules.remove(&id) {
            p.version = p.version.max(old.version + 1);
            if let Some(v) = self.proximity_by_tag.get_mut(&old.rule.tag_id) {
                v.retain(|r| *r != id);
            }
            if let Some(v) = self.proximity_by_victim.get_mut(&old.rule.victim_device_id) {
                v.retain(|r| *r != id);
            }
        }
        self.proximity_by_tag.entry(p.rule.tag_id.clone()).or_default().push(id);
        self.proximity_by_victim
            .entry(p.rule.victim_device_id.clone())
            .or_default()
            .push(id);
        self.digests.insert(id, rule_digest(&p.rule));
        self.rules.insert(id, p);
    }

    fn victim_fix(&mut self, device: &DeviceId, f: &Fix, out: &mut Vec<Action>) {
        let Some(latest) = f.seen() else { return };
        let victim_before = match self.victims.get_mut(device) {
            Some(known) if f.device_ms < known.device_ms => return,
            Some(known) => Some(std::mem::replace(known, latest)),
            None => {
                self.victims.insert(device.clone(), latest);
                None
            }
        };
        // The victim moved: judge each rule against the tag's latest fix.
        let rules = self.proximity_by_victim.get(device).cloned().unwrap_or_default();
        for id in rules {
            let Some(rule) = self.rules.get(&id).cloned() else {
                continue;
            };
            let tag = &rule.rule.tag_id;
            let Some(t) = self.tags.get(tag) else { continue };
            let Some(last) = t.last_fix else { continue };
            // Only a tag fix about as fresh as the victim's counts.
            if (f.device_ms - last.device_ms).abs() > i64::from(rule.rule.max_victim_fix_age_s) * 1000 {
                continue;
            }
            let ctx = Ctx {
                before: t.before(),
                victim_before: Some(victim_before),
                cause: Cause::VictimFix(*f),
            };
            let fix = Fix {
                seq: last.seq,
                device_ms: f.device_ms.max(last.device_ms),
                received_ms: f.received_ms,
                position: Some(last.position),
                accuracy_m: last.accuracy_m,
                battery: 100,
                tampered: false,
                batch: last.batch,
            };
            for reading in self.proximity_readings(&rule, &fix, out) {
                self.judge(tag, &fix, reading, &ctx, out);
            }
        }
    }

    fn tag_fix(&mut self, tag: &TagId, f: &Fix, out: &mut Vec<Action>) {
        let config = self.config;
        let t = match self.tags.get_mut(tag) {
            Some(t) => t,
            None => self.tags.entry(tag.clone()).or_default(),
        };
        let ctx = Ctx {
            before: t.before(),
            victim_before: None,
            cause: Cause::TagFix(*f),
        };
        let out_of_order = f.device_ms < t.last_device_ms;
        t.last_comm_ms = t.last_comm_ms.max(f.device_ms);
        if out_of_order {
            self.late_fix(tag, f, &ctx, out);
            return;
        }
        t.last_device_ms = f.device_ms;
        // Device conditions.
        let position = f.position;
        let device = [
            (pb::BreachKind::Tamper, f.tampered, !f.tampered),
            (
                pb::BreachKind::BatteryLow,
                f.battery <= config.battery_low_percent,
                f.battery > config.battery_low_percent + 5,
            ),
            (pb::BreachKind::NoCommunication, false, true),
            (
                pb::BreachKind::NoFix,
                position.is_none() && f.device_ms - t.last_gps_ms > config.no_fix_after_ms,
                position.is_some(),
            ),
        ];
        if position.is_some() {
            t.last_gps_ms = f.device_ms;
            t.last_fix = f.seen();
        }
        let holds = !t.open.is_empty() || !t.possible.is_empty();
        let changes = device.map(|(kind, raise, clear)| {
            let open = t.open.contains_key(&RuleKey::Device(kind));
            ((raise && !open) || (clear && open)).then_some((kind, raise, clear))
        });
        for (kind, raise, clear) in changes.into_iter().flatten() {
            self.device_condition(tag, kind, raise, clear, f.device_ms, Some(f), &ctx, out);
        }
        if position.is_none() {
            return;
        }
        let mut readings = std::mem::take(&mut self.scratch);
        self.readings(tag, f, holds, out, &mut readings);
        for reading in readings.drain(..) {
            self.judge(tag, f, reading, &ctx, out);
        }
        self.scratch = readings;
    }

    /// Every rule reading for a tag's fix: zones near it, its curfews, its proximity rules, and
    /// any zone it has an open or possible episode in (`holds`: it may have one).
    fn readings(&self, tag: &TagId, f: &Fix, holds: bool, out: &mut Vec<Action>, readings: &mut Vec<Reading>) {
        let Some((lat, lon)) = f.position else {
            return;
        };
        let reach = (f.accuracy_m + 1.0) / 111_000.0;
        let first = readings.len();
        // In zone order, not an index's: a state read back from a snapshot (its index built
        // afresh) reports in the same order as the one that wrote it.
        if let Some(zones) = self.exclusion_by_tag.get(tag) {
            zones.meeting((lat, lon), reach, |id| {
                if let Some(z) = self.zones.get(&id) {
                    readings.push(self.zone_reading(z, f, lat, lon));
                }
            });
        }
        if let Some(state) = self.tags.get(tag).filter(|_| holds) {
            for key in state.open.keys().chain(state.possible.keys()) {
                if let RuleKey::Zone(id) = key
                    && !readings[first..].iter().any(|r| r.rule_id == *id)
                    && let Some(z) = self.zones.get(id)
                    && z.kind == pb::ZoneKind::Exclusion
                {
                    readings.push(self.zone_reading(z, f, lat, lon));
                }
            }
        }
        for id in self.inclusion_by_tag.get(tag).into_iter().flatten() {
            if let Some(z) = self.zones.get(id) {
                readings.push(self.zone_reading(z, f, lat, lon));
            }
        }
        for id in self.proximity_by_tag.get(tag).into_iter().flatten() {
            if let Some(rule) = self.rules.get(id) {
                readings.extend(self.proximity_readings(rule, f, out));
            }
        }
    }

    fn zone_reading(&self, z: &Zone, f: &Fix, lat: f64, lon: f64) -> Reading {
        let depth = z.depth(lat, lon);
        let active = z.active_at(f.device_ms);
        // For an exclusion zone the breach side is inside; for a curfew, outside.
        let (into_breach, kind) = match z.kind {
            pb::ZoneKind::Inclusion => (-depth, pb::BreachKind::Curfew),
            _ => (depth, pb::BreachKind::Exclusion),
        };
        let acc = f.accuracy_m;
        let verdict = if !active {
            Verdict::ClearBeyondBuffer
        } else if into_breach >= acc {
            Verdict::Breach
        } else if into_breach > -acc {
            Verdict::Possible
        } else if -into_breach >= acc + z.exit_buffer_m {
            Verdict::ClearBeyondBuffer
        } else {
            Verdict::Clear
        };
        Reading {
            verdict,
            distance_m: depth.abs(),
            version: z.version,
            kind,
            rule_id: z.id,
        }
    }

    /// Proximity warning and breach readings, or a stale-victim report.
    fn proximity_readings(&self, p: &Proximity, f: &Fix, out: &mut Vec<Action>) -> Vec<Reading> {
        let Some(tag_pos) = f.position else {
            return Vec::new();
        };
        let rule = &p.rule;
        let victim = self.victims.get(&rule.victim_device_id);
        let max_age = i64::from(rule.max_victim_fix_age_s) * 1000;
        let fresh = victim.filter(|v| f.device_ms - v.device_ms <= max_age);
        let Some(Seen {
            position: victim_pos,
            accuracy_m: victim_acc,
            ..
        }) = fresh
        else {
            out.push(Action::StaleVictimFix {
                tag: rule.tag_id.clone(),
                rule: rule.rule_id,
                age_ms: victim.map(|v| f.device_ms - v.device_ms),
            });
            return Vec::new();
        };
        let d = distance_m(tag_pos, *victim_pos);
        let slack = f.accuracy_m + victim_acc;
        let (nearest, farthest) = ((d - slack).max(0.0), d + slack);
        let exit = self.config.proximity_exit_m;
        let judge = |threshold: f64, certain: bool| {
            if (certain && farthest <= threshold) || (!certain && nearest <= threshold) {
                Verdict::Breach
            } else if nearest <= threshold {
                Verdict::Possible
            } else if nearest > threshold + exit {
                Verdict::ClearBeyondBuffer
            } else {
                Verdict::Clear
            }
        };
        vec![
            Reading {
                verdict: judge(rule.warning_m, false),
                distance_m: d,
                version: p.version,
                kind: pb::BreachKind::ProximityWarning,
                rule_id: rule.rule_id,
            },
            Reading {
                verdict: judge(rule.breach_m, true),
                distance_m: d,
                version: p.version,
                kind: pb::BreachKind::Proximity,
                rule_id: rule.rule_id,
            },
        ]
    }

    fn key(reading: &Reading) -> RuleKey {
        match reading.kind {
            pb::BreachKind::ProximityWarning => RuleKey::ProximityWarning(reading.rule_id),
            pb::BreachKind::Proximity => RuleKey::Proximity(reading.rule_id),
            _ => RuleKey::Zone(reading.rule_id),
        }
    }

    /// Hysteresis: open on a certain breach, count clear fixes to close.
    fn judge(&mut self, tag: &TagId, f: &Fix, r: Reading, ctx: &Ctx, out: &mut Vec<Action>) {
        let config = self.config;
        let key = Self::key(&r);
        if r.verdict != Verdict::Breach
            && r.verdict != Verdict::Possible
            && self
                .tags
                .get(tag)
                .is_some_and(|t| !t.open.contains_key(&key) && !t.possible.contains_key(&key))
        {
            // Clear of a rule it is not in breach of: nothing to do (the common case).
            return;
        }
        // The victim's fix the reading rests on, as it stood before the input.
        let victim_fix = match r.kind {
            pb::BreachKind::ProximityWarning | pb::BreachKind::Proximity => ctx.victim_before.unwrap_or_else(|| {
                self.rules
                    .get(&r.rule_id)
                    .and_then(|p| self.victims.get(&p.rule.victim_device_id))
                    .copied()
            }),
            _ => None,
        };
        let digests = &self.digests;
        let why = |words: String, episode: Option<OpenEpisode>| Why {
            words,
            prior: ctx.prior(victim_fix, episode),
            cause: ctx.cause,
            thresholds: config,
            rule_version: r.version,
            rule_digest: digests.get(&r.rule_id).copied(),
        };
        let Some(t) = self.tags.get_mut(tag) else { return };
        let late = f.received_ms - f.device_ms > config.late_after_ms;
        let case = self
            .zones
            .get(&r.rule_id)
            .and_then(|z| z.case)
            .or_else(|| self.rules.get(&r.rule_id).and_then(|p| p.case))
            .or(t.case);
        match (t.open.get_mut(&key), r.verdict) {
            (None, Verdict::Breach) => {
                t.possible.remove(&key);
                let e = Episode::open(
                    tag,
                    Opening {
                        key,
                        kind: r.kind,
                        rule_id: r.rule_id,
                        rule_version: r.version,
                        seq: f.seq,
                        at_ms: f.device_ms,
                        late,
                    },
                );
                let update = report(
                    tag,
                    case,
                    &e,
                    pb::BreachState::Opened,
                    f,
                    r.distance_m,
                    why("opened: accuracy circle in breach".into(), None),
                );
                // The rule's victim device, else the one paired with the tag.
                let victim_device = self
                    .rules
                    .get(&r.rule_id)
                    .map(|p| &p.rule.victim_device_id)
                    .or(t.victim_device.as_ref());
                if matches!(r.kind, pb::BreachKind::Proximity | pb::BreachKind::Exclusion)
                    && let Some(victim) = victim_device
                {
                    out.push(Action::VictimAlert {
                        breach_id: e.breach_id,
                        victim_device: victim.clone(),
                        kind: r.kind,
                        tag: tag.clone(),
                        distance_m: r.distance_m,
                    });
                }
                out.push(Action::Breach(update));
                t.open.insert(key, e);
            }
            (None, Verdict::Possible) => {
                if t.possible.insert(key, f.seq).is_none() {
                    out.push(Action::Possible {
                        tag: tag.clone(),
                        rule: r.rule_id,
                        fix_seq: f.seq,
                    });
                }
            }
            (None, _) => {
                t.possible.remove(&key);
            }
            (Some(e), Verdict::ClearBeyondBuffer) => {
                let was = e.as_open();
                e.clear_fixes += 1;
                let since = *e.clear_since_ms.get_or_insert(f.device_ms);
                let clear_for = f.device_ms - since;
                if e.clear_fixes >= config.exit_fixes || clear_for >= config.exit_seconds * 1000 {
                    let e = t.open.remove(&key).unwrap_or_else(|| unreachable!("matched above"));
                    t.history.push((key, e.opened_ms, f.device_ms));
                    if t.history.len() > HISTORY {
                        t.history.remove(0);
                    }
                    let words = format!(
                        "closed: clear by the exit buffer for {} fixes, {} s",
                        e.clear_fixes,
                        clear_for / 1000
                    );
                    out.push(Action::Breach(close(
                        tag,
                        case,
                        &e,
                        f.device_ms,
                        f.position,
                        f.accuracy_m,
                        r.distance_m,
                        why(words, Some(was)),
                    )));
                }
            }
            (Some(e), verdict) => {
                let was = e.as_open();
                e.clear_fixes = 0;
                e.clear_since_ms = None;
                if verdict == Verdict::Breach && f.device_ms - e.last_report_ms >= config.update_every_ms {
                    e.last_report_ms = f.device_ms;
                    let update = report(
                        tag,
                        case,
                        e,
                        pb::BreachState::Updated,
                        f,
                        r.distance_m,
                        why("still in breach".into(), Some(was)),
                    );
                    out.push(Action::Breach(update));
                }
            }
        }
    }

    /// A fix older than one already evaluated: checked on its own; a breach it shows that no
    /// episode covered is raised late, opened and closed at once.
    fn late_fix(&mut self, tag: &TagId, f: &Fix, ctx: &Ctx, out: &mut Vec<Action>) {
        if f.position.is_none() {
            return;
        }
        let mut scratch = Vec::new();
        let mut readings = Vec::new();
        self.readings(tag, f, true, &mut scratch, &mut readings);
        let victims: Vec<Option<Seen>> = readings
            .iter()
            .map(|r| match r.kind {
                pb::BreachKind::ProximityWarning | pb::BreachKind::Proximity => self
                    .rules
                    .get(&r.rule_id)
                    .and_then(|p| self.victims.get(&p.rule.victim_device_id))
                    .copied(),
                _ => None,
            })
            .collect();
        let thresholds = self.config;
        let digests: Vec<Option<[u8; 32]>> = readings
            .iter()
            .map(|r| {
                (r.verdict == Verdict::Breach)
                    .then(|| self.digests.get(&r.rule_id).copied())
                    .flatten()
            })
            .collect();
        let Some(t) = self.tags.get_mut(tag) else { return };
        for ((r, victim_fix), rule_digest) in readings
            .into_iter()
            .zip(victims)
            .zip(digests)
            .filter(|((r, _), _)| r.verdict == Verdict::Breach)
        {
            let why = |words: &str| Why {
                words: words.to_owned(),
                prior: ctx.prior(victim_fix, None),
                cause: ctx.cause,
                thresholds,
                rule_version: r.version,
                rule_digest,
            };
            let key = Self::key(&r);
            let covered = t
                .history
                .iter()
                .any(|(k, a, b)| *k == key && *a <= f.device_ms && f.device_ms <= *b)
                || t.open.get(&key).is_some_and(|e| e.opened_ms <= f.device_ms);
            if covered {
                continue;
            }
            let e = Episode::open(
                tag,
                Opening {
                    key,
                    kind: r.kind,
                    rule_id: r.rule_id,
                    rule_version: r.version,
                    seq: f.seq,
                    at_ms: f.device_ms,
                    late: true,
                },
            );
            let case = t.case;
            out.push(Action::Breach(report(
                tag,
                case,
                &e,
                pb::BreachState::Opened,
                f,
                r.distance_m,
                why("opened late: an out-of-order fix"),
            )));
            out.push(Action::Breach(close(
                tag,
                case,
                &e,
                f.device_ms,
                f.position,
                f.accuracy_m,
                r.distance_m,
                why("closed: a single out-of-order fix"),
            )));
            t.history.push((key, f.device_ms, f.device_ms));
        }
    }

    /// Open or close a device condition.
    #[allow(clippy::too_many_arguments)]
    fn device_condition(
        &mut self,
        tag: &TagId,
        kind: pb::BreachKind,
        raise: bool,
        clear: bool,
        at_ms: i64,
        fix: Option<&Fix>,
        ctx: &Ctx,
        out: &mut Vec<Action>,
    ) {
        let thresholds = self.config;
        let config_late = self.config.late_after_ms;
        let Some(t) = self.tags.get_mut(tag) else { return };
        let key = RuleKey::Device(kind);
        let seq = fix.map_or(0, |f| f.seq);
        let late = fix.is_some_and(|f| f.received_ms - f.device_ms > config_late);
        let at = |f: Option<&Fix>| Fix {
            seq,
            device_ms: at_ms,
            received_ms: f.map_or(at_ms, |f| f.received_ms),
            position: f.and_then(|f| f.position),
            accuracy_m: f.map_or(0.0, |f| f.accuracy_m),
            battery: 0,
            tampered: false,
            batch: f.map_or(uuid::Uuid::nil(), |f| f.batch),
        };
        let why = |words: String, episode: Option<OpenEpisode>| Why {
            words,
            prior: ctx.prior(None, episode),
            cause: ctx.cause,
            thresholds,
            rule_version: 1,
            rule_digest: None,
        };
        match t.open.get(&key) {
            None if raise => {
                let e = Episode::open(
                    tag,
                    Opening {
                        key,
                        kind,
                        rule_id: device_rule_id(tag.as_str(), kind),
                        rule_version: 1,
                        seq,
                        at_ms,
                        late,
                    },
                );
                out.push(Action::Breach(report(
                    tag,
                    t.case,
                    &e,
                    pb::BreachState::Opened,
                    &at(fix),
                    0.0,
                    why(format!("opened: {}", kind.as_str_name()), None),
                )));
                t.open.insert(key, e);
            }
            Some(_) if clear => {
                let e = t.open.remove(&key).unwrap_or_else(|| unreachable!("matched above"));
                t.history.push((key, e.opened_ms, at_ms));
                let was = e.as_open();
                let f = at(fix);
                out.push(Action::Breach(close(
                    tag,
                    t.case,
                    &e,
                    at_ms,
                    f.position,
                    f.accuracy_m,
                    0.0,
                    why("closed: condition cleared".into(), Some(was)),
                )));
            }
            _ => {}
        }
    }

    fn watermark(&mut self, at_ms: i64, out: &mut Vec<Action>) {
        if at_ms <= self.watermark_ms {
            return;
        }
        self.watermark_ms = at_ms;
        self.judge_silence(None, at_ms, out);
    }

    /// Raise no-fix and no-communication for fitted tags (`only` one, or every one) silent
    /// past their limits at event time `at_ms`; nothing before any gateway is heard.
    fn judge_silence(&mut self, only: Option<&TagId>, at_ms: i64, out: &mut Vec<Action>) {
        if at_ms <= 0 {
            return;
        }
        let (no_fix, no_comm) = (self.config.no_fix_after_ms, self.config.no_comm_after_ms);
        let mut due: Vec<(TagId, pb::BreachKind)> = self
            .tags
            .iter()
            .filter(|(tag, t)| t.fitted && only.is_none_or(|o| o == *tag))
            .flat_map(|(tag, t)| {
                let mut v = Vec::new();
                if at_ms - t.last_comm_ms > no_comm
                    && !t.open.contains_key(&RuleKey::Device(pb::BreachKind::NoCommunication))
                {
                    v.push((tag.clone(), pb::BreachKind::NoCommunication));
                }
                if at_ms - t.last_gps_ms > no_fix && !t.open.contains_key(&RuleKey::Device(pb::BreachKind::NoFix)) {
                    v.push((tag.clone(), pb::BreachKind::NoFix));
                }
                v
            })
            .collect();
        due.sort();
        for (tag, kind) in due {
            let Some(before) = self.tags.get(&tag).map(TagState::before) else {
                continue;
            };
            let ctx = Ctx {
                before,
                victim_before: None,
                cause: Cause::Watermark(at_ms),
            };
            self.device_condition(&tag, kind, true, false, at_ms, None, &ctx, out);
        }
    }
}

fn report(
    tag: &TagId,
    case: Option<CaseId>,
    e: &Episode,
    state: pb::BreachState,
    f: &Fix,
    distance_m: f64,
    why: Why,
) -> BreachUpdate {
    BreachUpdate {
        breach_id: e.breach_id,
        case,
        tag: tag.clone(),
        kind: e.kind,
        state,
        rule_id: e.rule_id,
        opened_at_ms: e.opened_ms,
        observed_at_ms: f.device_ms,
        position: f.position,
        accuracy_m: f.accuracy_m,
        distance_m,
        late: e.late,
        evidence: Box::new(Evidence {
            thresholds: Some(why.thresholds),
            rule_version: why.rule_version,
            hysteresis: why.words,
            prior: why.prior,
            cause: why.cause,
            rule_digest: why.rule_digest,
            engine_logic: snapshot::ENGINE_LOGIC,
        }),
    }
}

/// The closing report of an episode at `at_ms` (the evidence names its first fix).
#[allow(clippy::too_many_arguments)]
fn close(
    tag: &TagId,
    case: Option<CaseId>,
    e: &Episode,
    at_ms: i64,
    position: Option<(f64, f64)>,
    accuracy_m: f64,
    distance_m: f64,
    why: Why,
) -> BreachUpdate {
    let at = Fix {
        seq: e.first_fix,
        device_ms: at_ms.max(e.opened_ms),
        received_ms: at_ms,
        position,
        accuracy_m,
        battery: 0,
        tampered: false,
        batch: uuid::Uuid::nil(),
    };
    report(tag, case, e, pb::BreachState::Closed, &at, distance_m, why)
}
