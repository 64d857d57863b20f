//! Faults as a test you can run for an hour (issue 20). A 3-node JetStream cluster whose routes,
//! and the nodes' connections to it, pass through a network that fails on command
//! ([`hru_testkit::faults`]); the police HRU's and CWP's nodes take conditional appends from
//! writers the whole time; each episode injects one fault chosen from a seeded generator
//! (a server isolated, one route cut, a node cut off from one server or from all, a server or a
//! node paused with SIGSTOP, a server or a node killed with SIGKILL and restarted), holds it,
//! heals it and waits for the system to make progress again. Every operation's invocation and
//! outcome is recorded, and the history is checked against the log once the faults have
//! healed:
//! - every acknowledged write is in `HRU_EVENTS` exactly once, at the sequence it was
//!   acknowledged with;
//! - no write is there twice, and none the node refused is there at all (an unknown outcome
//!   may be absent, never doubled);
//! - per case, every write on the log follows the version its writer expected: conditional
//!   appends are linearizable, each expected version has at most one winner;
//! - every producer's chain is intact and `hru audit verify` is clean;
//! - every node's projections equal a clean rebuild;
//! - the geofence, fed by a simulated fleet the whole time and itself paused, killed and cut
//!   off, has logged every breach decision exactly once, as the pure engine decides over the
//!   logged inputs.
//!
//! Each server's store is on its own small disk (a tmpfs seen through a power-cut file system,
//! when the run may mount them: root), so a server's disk can be filled and freed, and servers'
//! power cut: killed, with every write they had not fsynced lost.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::TryStreamExt as _;
use hru_domain::EventType;
use hru_log::SharedLog as _;
use hru_testkit::faults::{End, FaultyNet};
use hru_testkit::{ClusterPorts, NatsCluster};
use hru_wire::v1 as pb;
use prost::Message as _;
use rand::{Rng as _, SeedableRng as _};

use crate::{CHESHIRE_PARTIES, NodeProcess, World};

/// Servers in the cluster.
const SERVERS: usize = 3;
/// The nodes written through: (party, the purpose its people record under).
const WRITERS: [(&str, &str); 2] = [("police-hru", "risk-management"), ("cwp", "clinical-care")];
/// Cases each writer keeps.
const CASES_PER_WRITER: usize = 4;
/// How long a call may take before its outcome is taken as unknown.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the system has to make progress again after a fault heals.
const SETTLE: Duration = Duration::from_secs(45);
/// Tags in the simulated fleet, each with its victim's device, home zone and proximity rule.
const TAGS: usize = 4;
/// Wall time between the fleet gateway's flushes, and the simulated time each one covers.
const FLEET_TICK: Duration = Duration::from_millis(500);
/// Simulated milliseconds per flush.
const FLEET_STEP_MS: i64 = 5_000;
/// How long restarted servers are given to become healthy (a whole cluster recovering its
/// streams on a loaded machine takes tens of seconds).
const RESTART_WITHIN: Duration = Duration::from_secs(60);
/// After how many episodes in a row that ended with a server not healthy a run ends (a cluster
/// that does not recover makes further episodes meaningless).
const GIVE_UP_AFTER: u32 = 3;
/// How many times a run keeps its services' logs (for stuck or unhealthy episodes).
const LOGS_KEPT: usize = 8;
/// Each server's own disk: room for the streams' reservations (`HRU_SNAPSHOTS` bounds itself at
/// 2 GiB, and JetStream counts on three quarters of a disk).
const DISK_BYTES: u64 = 4 << 30;
/// The geofence's settings in the run (engine thresholds at their defaults, as the reference
/// engine runs).
const GEOFENCE: &str = "snapshot_every_s = 2\nheartbeat_s = 0.5\nlapse_after_s = 30";

/// What a run is asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// Episodes: one fault each.
    pub episodes: u32,
    /// Seed of the fault schedule (and of the writers' choices).
    pub seed: u64,
    /// `sync_interval: always` on every server (the backbone's setting); false: the default.
    pub sync_always: bool,
    /// The kinds of fault drawn from; empty: every kind.
    pub kinds: Vec<Fault>,
}

/// The kinds of fault an episode injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// One server cut off from both others (a minority of one against a majority of two).
    IsolateServer,
    /// One route between two servers cut (the third still reaches both: a bridge).
    CutRoute,
    /// A node cut off from every server.
    IsolateNode,
    /// A node cut off from one server.
    NodeFromServer,
    /// A server stopped with SIGSTOP, then continued.
    PauseServer,
    /// A node stopped with SIGSTOP, then continued.
    PauseNode,
    /// A server killed with SIGKILL and restarted on its store.
    KillServer,
    /// A node killed with SIGKILL and restarted on its data.
    KillNode,
    /// A server killed, the last block of its copy of `HRU_EVENTS` cut short (a torn write, or
    /// a tail the disk never kept), and restarted on it.
    TruncateServer,
    /// A server's disk filled to the last byte, then freed (the server restarted if it stopped
    /// JetStream meanwhile, as its operator would).
    FillDisk,
    /// The geofence stopped with SIGSTOP, then continued.
    PauseGeofence,
    /// The geofence killed with SIGKILL and restarted on its data.
    KillGeofence,
    /// The geofence cut off from every server.
    IsolateGeofence,
    /// One server's power cut: killed, its disk losing every write not fsynced, restarted.
    PowerCutServer,
    /// Two servers' power cut at once (a majority), restarted together.
    PowerCutMajority,
    /// Every server's power cut at once (the whole cluster), restarted together.
    PowerCutAll,
}

impl Fault {
    /// Every kind, in the order they are counted.
    pub const ALL: [Fault; 16] = [
        Fault::IsolateServer,
        Fault::CutRoute,
        Fault::IsolateNode,
        Fault::NodeFromServer,
        Fault::PauseServer,
        Fault::PauseNode,
        Fault::KillServer,
        Fault::KillNode,
        Fault::TruncateServer,
        Fault::FillDisk,
        Fault::PauseGeofence,
        Fault::KillGeofence,
        Fault::IsolateGeofence,
        Fault::PowerCutServer,
        Fault::PowerCutMajority,
        Fault::PowerCutAll,
    ];

    /// The kind named `name` (as in reports).
    pub fn named(name: &str) -> Option<Fault> {
        Fault::ALL.into_iter().find(|f| f.name() == name)
    }

    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Fault::IsolateServer => "isolate-server",
            Fault::CutRoute => "cut-route",
            Fault::IsolateNode => "isolate-node",
            Fault::NodeFromServer => "node-from-server",
            Fault::PauseServer => "pause-server",
            Fault::PauseNode => "pause-node",
            Fault::KillServer => "kill-server",
            Fault::KillNode => "kill-node",
            Fault::TruncateServer => "truncate-server",
            Fault::FillDisk => "fill-disk",
            Fault::PauseGeofence => "pause-geofence",
            Fault::KillGeofence => "kill-geofence",
            Fault::IsolateGeofence => "isolate-geofence",
            Fault::PowerCutServer => "power-cut-server",
            Fault::PowerCutMajority => "power-cut-majority",
            Fault::PowerCutAll => "power-cut-all",
        }
    }

    /// Whether it needs the servers' own disks (else it is not drawn).
    fn needs_disks(self) -> bool {
        matches!(
            self,
            Fault::FillDisk | Fault::PowerCutServer | Fault::PowerCutMajority | Fault::PowerCutAll
        )
    }
}

/// How an operation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged at this log sequence.
    Ok(u64),
    /// Refused by the node: nothing was written.
    Refused(String),
    /// Not known: written at most once, or not at all.
    Unknown(String),
}

/// One operation of the history: a conditional append of an `InterventionStarted` whose
/// intervention id is the operation's id.
#[derive(Debug, Clone)]
pub struct Op {
    /// Operation (and intervention) id.
    pub id: uuid::Uuid,
    /// Which writer (index into the writers).
    pub writer: usize,
    /// The case.
    pub case: uuid::Uuid,
    /// The case version the writer expected.
    pub expected: u64,
    /// When invoked and when it ended, ms since the run began.
    pub span_ms: (u64, u64),
    /// How it ended.
    pub outcome: Outcome,
}

impl Op {
    fn line(&self) -> String {
        let outcome = match &self.outcome {
            Outcome::Ok(seq) => format!("ok {seq}"),
            Outcome::Refused(why) => format!("refused {why:?}"),
            Outcome::Unknown(why) => format!("unknown {why:?}"),
        };
        format!(
            "{} writer {} case {} expected {} at {}..{} ms: {outcome}",
            self.id, self.writer, self.case, self.expected, self.span_ms.0, self.span_ms.1
        )
    }
}

/// What the checker found.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Acknowledged writes not on the log.
    pub lost: Vec<String>,
    /// Writes on the log more than once.
    pub duplicated: Vec<String>,
    /// Acknowledged writes on the log at another sequence than acknowledged.
    pub misplaced: Vec<String>,
    /// Writes the node refused that are on the log all the same.
    pub refused_but_written: Vec<String>,
    /// Writes on the log that do not follow the version their writer expected.
    pub not_linearizable: Vec<String>,
    /// Producer chain breaks, and envelopes that do not verify.
    pub chain_breaks: Vec<String>,
    /// `hru audit verify`'s complaint, if any.
    pub audit: Option<String>,
    /// The servers' copies of `HRU_EVENTS` that still differ once healed and settled.
    pub divergent: Vec<String>,
    /// Nodes whose projections, finished on their own store, differ from a clean rebuild.
    pub projections: Vec<String>,
    /// Breach decisions the pure engine makes over the logged inputs that the log lacks.
    pub breaches_missed: Vec<String>,
    /// Breach decisions on the log more than once.
    pub breaches_twice: Vec<String>,
    /// Breach decisions on the log that the pure engine does not make.
    pub breaches_unexpected: Vec<String>,
    /// Episodes after which some writer made no progress within the settle time, or servers
    /// were not healthy in time after a restart.
    pub stuck: Vec<String>,
    /// The healed cluster not serving its log at the end (nothing on it can be shown).
    pub unreadable: Vec<String>,
    /// Nodes and geofences that exited on their own (restarted as their supervisor would):
    /// reported, not a safety failure.
    pub exits: Vec<String>,
}

impl Verdict {
    /// Whether every safety check holds (a stuck episode is reported, not a safety failure).
    pub fn safe(&self) -> bool {
        self.lost.is_empty()
            && self.unreadable.is_empty()
            && self.duplicated.is_empty()
            && self.misplaced.is_empty()
            && self.refused_but_written.is_empty()
            && self.not_linearizable.is_empty()
            && self.chain_breaks.is_empty()
            && self.audit.is_none()
            && self.divergent.is_empty()
            && self.projections.is_empty()
            && self.breaches_missed.is_empty()
            && self.breaches_twice.is_empty()
            && self.breaches_unexpected.is_empty()
    }
}

/// A run's counts and verdict.
#[derive(Debug)]
pub struct Report {
    /// The options it ran with.
    pub options: Options,
    /// Episodes run (fewer than asked when interrupted, or when the cluster did not recover).
    pub episodes: u32,
    /// Why the run ended before its episodes were done, if it did.
    pub ended: Option<String>,
    /// Episodes per fault kind.
    pub faults: BTreeMap<Fault, u32>,
    /// Operations acknowledged, refused and of unknown outcome.
    pub acknowledged: usize,
    /// Refused by a node.
    pub refused: usize,
    /// Outcome unknown.
    pub unknown: usize,
    /// Unknown-outcome writes found on the log.
    pub unknown_written: usize,
    /// Events in `HRU_EVENTS` at the end.
    pub events: usize,
    /// The fleet gateway's flushes: published, and failed (kept and sent again).
    pub flushes: (u64, u64),
    /// Breach decisions the pure engine makes over the logged inputs.
    pub breaches: usize,
    /// Bytes written and not synced that the power cuts took back from the servers' disks.
    pub cut_bytes: u64,
    /// Whether the servers' stores were on their own disks (else no disk was filled and no
    /// power cut), and why not.
    pub disks: Result<(), String>,
    /// How long the run took.
    pub elapsed: Duration,
    /// What the checker found.
    pub verdict: Verdict,
    /// Where the history was written.
    pub history: std::path::PathBuf,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let o = &self.options;
        writeln!(
            f,
            "chaos: {} episodes{}, seed {}, sync_interval {}, {:.0} s",
            self.episodes,
            if self.episodes < o.episodes {
                format!(
                    " of {} ({})",
                    o.episodes,
                    self.ended.as_deref().unwrap_or("interrupted")
                )
            } else {
                String::new()
            },
            o.seed,
            if o.sync_always { "always" } else { "default" },
            self.elapsed.as_secs_f64()
        )?;
        for kind in Fault::ALL {
            writeln!(
                f,
                "  {:<20}{}",
                kind.name(),
                self.faults.get(&kind).copied().unwrap_or(0)
            )?;
        }
        writeln!(
            f,
            "  operations: {} acknowledged, {} refused, {} unknown ({} of them written); {} events in HRU_EVENTS",
            self.acknowledged, self.refused, self.unknown, self.unknown_written, self.events
        )?;
        writeln!(
            f,
            "  fleet: {} flushes published, {} failed and sent again; {} breach decisions by the pure engine",
            self.flushes.0, self.flushes.1, self.breaches
        )?;
        let cuts: u32 = [Fault::PowerCutServer, Fault::PowerCutMajority, Fault::PowerCutAll]
            .iter()
            .filter_map(|kind| self.faults.get(kind))
            .sum();
        if cuts > 0 {
            writeln!(
                f,
                "  power cuts: {cuts}, taking back {} KiB written and not synced",
                self.cut_bytes >> 10
            )?;
        }
        if let Err(why) = &self.disks {
            writeln!(f, "  no disk was filled and no power was cut: {why}")?;
        }
        let v = &self.verdict;
        writeln!(
            f,
            "  lost {} · log unreadable {} · duplicated {} · misplaced {} · refused but written {} · not linearizable {} · chain breaks {} · divergent copies {} · projections unlike a rebuild {} · audit {} · breaches missed {} · twice {} · not the engine's {} · stuck {} · service exits {}",
            v.lost.len(),
            v.unreadable.len(),
            v.duplicated.len(),
            v.misplaced.len(),
            v.refused_but_written.len(),
            v.not_linearizable.len(),
            v.chain_breaks.len(),
            v.divergent.len(),
            v.projections.len(),
            v.audit.as_deref().map_or("clean", |_| "FAILED"),
            v.breaches_missed.len(),
            v.breaches_twice.len(),
            v.breaches_unexpected.len(),
            v.stuck.len(),
            v.exits.len()
        )?;
        for (what, list) in [
            ("lost", &v.lost),
            ("log unreadable", &v.unreadable),
            ("duplicated", &v.duplicated),
            ("misplaced", &v.misplaced),
            ("refused but written", &v.refused_but_written),
            ("not linearizable", &v.not_linearizable),
            ("chain break", &v.chain_breaks),
            ("divergent copies", &v.divergent),
            ("projections", &v.projections),
            ("breach missed", &v.breaches_missed),
            ("breach twice", &v.breaches_twice),
            ("breach not the engine's", &v.breaches_unexpected),
            ("stuck", &v.stuck),
            ("exited", &v.exits),
        ] {
            for item in list.iter().take(10) {
                writeln!(f, "  {what}: {item}")?;
            }
        }
        if let Some(audit) = &v.audit {
            writeln!(f, "  audit: {audit}")?;
        }
        write!(
            f,
            "  verdict: {} (history: {}; reproduce the schedule with --seed {})",
            if v.safe() { "SAFE" } else { "UNSAFE" },
            self.history.display(),
            o.seed
        )
    }
}

/// The geofence process, its metrics port and the broker URLs it reaches the servers at.
struct GeofenceProcess {
    child: std::process::Child,
    port: u16,
    url: String,
}

impl GeofenceProcess {
    fn start(world: &World, url: &str) -> Self {
        let port = crate::free_port();
        Self {
            child: world.start_geofence_on("geofence", port, GEOFENCE, url),
            port,
            url: url.to_owned(),
        }
    }

    /// Kill it (if running) and start it again on its config and data.
    fn restart(&mut self, world: &World) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = world.start_geofence_on("geofence", self.port, GEOFENCE, &self.url);
    }
}

impl Drop for GeofenceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The cluster, its network, the world, the nodes written through and the geofence.
struct System {
    /// The nodes (dropped first).
    nodes: Vec<NodeProcess>,
    /// Each node's broker URLs, through its proxies.
    node_urls: Vec<String>,
    /// The geofence, reaching the servers through its own proxies.
    geofence: GeofenceProcess,
    /// The fleet: its simulator, until the run takes it.
    fleet: Option<hru_gateway::simulate::Simulator>,
    /// Whether each server's store is on its own disk, or why not.
    disks: Result<(), String>,
    world: World,
    cluster: NatsCluster,
    /// The network (dropped last: nothing is left holding a proxy).
    net: FaultyNet,
    /// Where this run's artifacts go, and what names them (seed and sync setting).
    artifacts: (std::path::PathBuf, String),
    /// Bytes the power cuts so far took back (written, not synced).
    cut_bytes: u64,
    /// Log directories kept so far (at most [`LOGS_KEPT`]).
    logs_kept: usize,
    /// What went wrong during the episode under way that is not a safety failure (a server
    /// not healthy in time): reported as the episode's trouble.
    troubles: Vec<String>,
}

/// Start the cluster behind proxies, each server's store on its own disk where that may be
/// mounted, retrying when a picked port was taken meanwhile.
fn start_cluster(net: &FaultyNet, sync_always: bool) -> (NatsCluster, ClusterPorts, Result<(), String>) {
    let mut attempt = 1;
    let mut disks = Ok(());
    loop {
        let ports = ClusterPorts::pick(SERVERS).expect("free ports");
        let reach: Vec<u16> = (0..SERVERS)
            .map(|i| net.route_proxy(i, ports.route[i]).expect("a route proxy"))
            .collect();
        let disk = disks.is_ok().then_some(DISK_BYTES);
        match NatsCluster::start_reached(&ports, &reach, sync_always, disk) {
            Ok(cluster) => return (cluster, ports, disks),
            Err(e @ hru_testkit::TestkitError::NoOwnDisk { .. }) => {
                eprintln!("chaos: no disk will be filled and no power cut: {e}");
                disks = Err(e.to_string());
            }
            Err(e) if attempt < 3 => {
                eprintln!("chaos: the cluster did not start ({e}); trying again");
                attempt += 1;
            }
            Err(e) => panic!("the cluster starts behind its proxies: {e}"),
        }
    }
}

impl System {
    fn start(options: &Options) -> Self {
        let (sync_always, seed) = (options.sync_always, options.seed);
        let net = FaultyNet::new();
        let (cluster, ports, disks) = start_cluster(&net, sync_always);
        let direct = cluster.urls().join(",");
        let world = World::new("../policies/cheshire-hru.toml", &CHESHIRE_PARTIES)
            .on_broker(direct)
            .with_replicas(SERVERS)
            .in_own_process_groups();
        world.provision_while_forming(&[]);
        let proxied = |service: &str| {
            (0..SERVERS)
                .map(|j| {
                    let port = net.client_proxy(service, j, ports.client[j]).expect("a client proxy");
                    format!("nats://127.0.0.1:{port}")
                })
                .collect::<Vec<_>>()
                .join(",")
        };
        let node_urls: Vec<String> = WRITERS.iter().map(|(party, _)| proxied(party)).collect();
        let nodes = WRITERS
            .iter()
            .zip(&node_urls)
            .map(|((party, _), url)| world.start_node_on(party, "", url))
            .collect();
        // The fleet's tags fitted, their victims' homes zoned and proximity rules set, before the
        // geofence starts: every decision follows from positions read after them.
        let mut fleet = crate::fleet(&world, TAGS, seed, jiff::Timestamp::now().as_millisecond());
        for i in (0..TAGS).step_by(2) {
            fleet.approach(i);
        }
        let victims: Vec<String> = fleet.pairs().into_iter().map(|(_, v, _)| v).collect();
        let (_, isa) = world.deployment();
        let provisioned = crate::runtime().block_on(async {
            let servers: Vec<async_nats::ServerAddr> = cluster.urls().iter().filter_map(|u| u.parse().ok()).collect();
            let nats = async_nats::connect(servers).await.map_err(|e| e.to_string())?;
            hru_broker::provision_devices(&nats, &victims, isa.alerts_max_age(), SERVERS)
                .await
                .map_err(|e| e.to_string())
        });
        provisioned.expect("the victims' alert streams are provisioned");
        let geofence = GeofenceProcess::start(&world, &proxied("geofence"));
        Self {
            nodes,
            node_urls,
            geofence,
            fleet: Some(fleet),
            disks,
            world,
            cluster,
            net,
            artifacts: (artifacts_dir(), run_name(options)),
            cut_bytes: 0,
            logs_kept: 0,
            troubles: Vec::new(),
        }
    }

    /// Keep every server's, node's and the geofence's log so far where the test artifacts go,
    /// in a directory named by the run and `label`: where they are (the first [`LOGS_KEPT`]
    /// times of a run; later, where the last were kept).
    fn keep_logs(&mut self, label: &str) -> std::path::PathBuf {
        let (dir, run) = &self.artifacts;
        if self.logs_kept >= LOGS_KEPT {
            return dir.clone();
        }
        self.logs_kept += 1;
        let dir = dir.join(format!("{run}-{label}"));
        let _ = std::fs::create_dir_all(&dir);
        for (i, server) in self.cluster.nodes().iter().enumerate() {
            let _ = std::fs::copy(server.log_path(), dir.join(format!("n{i}.log")));
        }
        let world = self.world.dir.path();
        let logs = std::fs::read_dir(world).into_iter().flatten().flatten();
        for log in logs.filter(|e| e.path().extension().is_some_and(|x| x == "log")) {
            let _ = std::fs::copy(log.path(), dir.join(log.file_name()));
        }
        dir
    }

    fn pid_signal(pid: u32, signal: &str) {
        let _ = std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status();
    }

    /// Restart every node that has exited on its own, as its supervisor would: what exited.
    fn supervise(&mut self) -> Vec<String> {
        let mut exited = Vec::new();
        for (i, node) in self.nodes.iter_mut().enumerate() {
            if let Ok(Some(status)) = node.child.try_wait() {
                let tail = node
                    .log
                    .as_ref()
                    .and_then(|l| std::fs::read_to_string(l).ok())
                    .and_then(|t| t.lines().last().map(str::to_owned))
                    .unwrap_or_default();
                exited.push(format!("{}'s node exited ({status}): {tail}", node.party));
                node.restart(&self.node_urls[i]);
            }
        }
        if let Ok(Some(status)) = self.geofence.child.try_wait() {
            let tail = std::fs::read_to_string(self.world.dir.path().join("geofence.log"))
                .ok()
                .and_then(|t| t.lines().last().map(str::to_owned))
                .unwrap_or_default();
            exited.push(format!("the geofence exited ({status}): {tail}"));
            self.geofence.restart(&self.world);
        }
        exited
    }

    /// Wait (restarting services that exit) until every node takes connections and the
    /// geofence has rebuilt its state.
    fn services_answer(&mut self, verdict: &mut Verdict) {
        let deadline = Instant::now() + SETTLE;
        loop {
            verdict.exits.extend(self.supervise());
            if self
                .nodes
                .iter()
                .all(|n| std::net::TcpStream::connect(("127.0.0.1", n.port)).is_ok())
                && crate::metric(self.geofence.port, "hru_geofence_ready") == 1
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the nodes answer and the geofence is ready within {SETTLE:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Show that a cut is a partition the servers feel: with the meta leader cut off from both
    /// others, they elect another leader; healed, all three agree on one again.
    fn calibrate(&self) {
        let deadline = Instant::now() + SETTLE;
        let agreed = || {
            let seen: Vec<Option<usize>> = (0..SERVERS).map(|i| self.cluster.meta_leader_seen_by(i)).collect();
            seen[0].filter(|_| seen.iter().all(|s| *s == seen[0]))
        };
        let leader = loop {
            if let Some(l) = agreed() {
                break l;
            }
            assert!(Instant::now() < deadline, "the cluster agrees on a meta leader");
            std::thread::sleep(Duration::from_millis(100));
        };
        for j in (0..SERVERS).filter(|&j| j != leader) {
            self.net.cut(End::Server(leader), End::Server(j));
        }
        let others: Vec<usize> = (0..SERVERS).filter(|&j| j != leader).collect();
        loop {
            let elected = others
                .iter()
                .all(|&j| self.cluster.meta_leader_seen_by(j).is_some_and(|l| l != leader));
            if elected {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "with n{leader} cut off, the others elect another meta leader (the cut holds the routes' traffic)"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        self.net.heal_all();
        while agreed().is_none() {
            assert!(
                Instant::now() < deadline,
                "healed, the cluster agrees on a meta leader again"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            self.net.routes_identified() >= SERVERS * (SERVERS - 1),
            "each server's routes are told apart by their dialling server ({} identified)",
            self.net.routes_identified()
        );
    }

    /// Restart server `i` on its store; see [`restart_servers`](Self::restart_servers).
    fn restart_server(&mut self, i: usize) -> String {
        self.restart_servers(&[i])
    }

    /// Restart the servers `which` together on their stores (a quorum needs each other to
    /// become healthy) and give them [`RESTART_WITHIN`]: what the restart showed, in words
    /// (empty when nothing). Servers not healthy by then are left to recover, as an operator
    /// would leave them; that is a trouble of the episode, reported, with the logs kept.
    fn restart_servers(&mut self, which: &[usize]) -> String {
        let began = Instant::now();
        match self.cluster.restart_together(which, RESTART_WITHIN) {
            Ok(()) if began.elapsed() < Duration::from_secs(20) => String::new(),
            Ok(()) => format!(" (healthy after {:.0} s)", began.elapsed().as_secs_f64()),
            Err(e) => {
                let first = e.to_string().lines().next().unwrap_or_default().to_owned();
                let logs = self.keep_logs("not-healthy");
                let trouble = format!(
                    "servers {which:?} not healthy {RESTART_WITHIN:?} after a restart: {first} (logs in {})",
                    logs.display()
                );
                eprintln!("chaos: {trouble}");
                self.troubles.push(trouble);
                " (not healthy in time)".to_owned()
            }
        }
    }

    /// Inject `fault` (its targets drawn from `rng`), hold it for `hold`, and heal it: what was
    /// done, in words.
    fn inject(&mut self, fault: Fault, rng: &mut rand::rngs::StdRng, hold: Duration) -> String {
        let server = rng.gen_range(0..SERVERS);
        let node = rng.gen_range(0..self.nodes.len());
        let party = WRITERS[node].0;
        let what = match fault {
            Fault::IsolateServer => {
                for j in (0..SERVERS).filter(|&j| j != server) {
                    self.net.cut(End::Server(server), End::Server(j));
                }
                std::thread::sleep(hold);
                self.net.heal_all();
                format!("n{server} isolated")
            }
            Fault::CutRoute => {
                let other = (server + 1 + rng.gen_range(0..SERVERS - 1)) % SERVERS;
                self.net.cut(End::Server(server), End::Server(other));
                std::thread::sleep(hold);
                self.net.heal_all();
                format!("route n{server}–n{other} cut")
            }
            Fault::IsolateNode => {
                for j in 0..SERVERS {
                    self.net.cut(End::Service(party.to_owned()), End::Server(j));
                }
                std::thread::sleep(hold);
                self.net.heal_all();
                format!("{party}'s node cut off from every server")
            }
            Fault::NodeFromServer => {
                self.net.cut(End::Service(party.to_owned()), End::Server(server));
                std::thread::sleep(hold);
                self.net.heal_all();
                format!("{party}'s node cut off from n{server}")
            }
            Fault::PauseServer => {
                let pid = self.cluster.node(server).pid().expect("a running server");
                Self::pid_signal(pid, "-STOP");
                std::thread::sleep(hold);
                Self::pid_signal(pid, "-CONT");
                format!("n{server} paused")
            }
            Fault::PauseNode => {
                let pid = self.nodes[node].child.id();
                Self::pid_signal(pid, "-STOP");
                std::thread::sleep(hold);
                Self::pid_signal(pid, "-CONT");
                format!("{party}'s node paused")
            }
            Fault::KillServer => {
                self.cluster.kill(server).expect("kill a server");
                std::thread::sleep(hold);
                let slow = self.restart_server(server);
                format!("n{server} killed and restarted{slow}")
            }
            Fault::TruncateServer => {
                self.cluster.kill(server).expect("kill a server");
                // Every server holds a copy (three replicas on three servers).
                let block = last_block(self.cluster.node(server).store_dir(), "HRU_EVENTS")
                    .expect("a block of HRU_EVENTS on every server");
                let len = std::fs::metadata(&block).map_or(0, |m| m.len());
                let by = rng.gen_range(1..=len.clamp(1, 4096));
                // The disk's own damage: a later power cut does not undo it.
                let cut = len.saturating_sub(by);
                match self.cluster.node(server).disk() {
                    Some(disk) => disk.truncate_durably(&block, cut),
                    None => std::fs::OpenOptions::new()
                        .write(true)
                        .open(&block)
                        .and_then(|file| file.set_len(cut))
                        .map_err(|e| hru_testkit::TestkitError::Invalid(e.to_string())),
                }
                .expect("truncate the block");
                std::thread::sleep(hold);
                let slow = self.restart_server(server);
                let name = block
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                format!("n{server} killed, HRU_EVENTS block {name} cut by {by} of {len} bytes, restarted{slow}")
            }
            Fault::FillDisk => {
                let disk = self.cluster.node(server).disk().expect("drawn only with disks");
                let took = disk.fill().expect("fill a server's disk");
                let log = self.cluster.node(server).log_path().to_owned();
                let stopped = || {
                    std::fs::read_to_string(&log)
                        .map(|t| t.matches("resources, will be DISABLED").count())
                        .unwrap_or(0)
                };
                let before = stopped();
                std::thread::sleep(hold);
                disk.free().expect("free a server's disk");
                // A write refused just before the space came back may be logged a moment later.
                std::thread::sleep(Duration::from_secs(1));
                let mut what = format!("n{server}'s disk filled ({} MiB)", took >> 20);
                if stopped() > before {
                    let slow = self.restart_server(server);
                    what.push_str(&format!(", JetStream stopped on it: restarted once freed{slow}"));
                }
                what
            }
            Fault::PauseGeofence => {
                let pid = self.geofence.child.id();
                Self::pid_signal(pid, "-STOP");
                std::thread::sleep(hold);
                Self::pid_signal(pid, "-CONT");
                "the geofence paused".to_owned()
            }
            Fault::KillGeofence => {
                let _ = self.geofence.child.kill();
                let _ = self.geofence.child.wait();
                std::thread::sleep(hold);
                self.geofence.restart(&self.world);
                "the geofence killed and restarted".to_owned()
            }
            Fault::IsolateGeofence => {
                for j in 0..SERVERS {
                    self.net.cut(End::Service("geofence".to_owned()), End::Server(j));
                }
                std::thread::sleep(hold);
                self.net.heal_all();
                "the geofence cut off from every server".to_owned()
            }
            Fault::PowerCutServer | Fault::PowerCutMajority | Fault::PowerCutAll => {
                let count = match fault {
                    Fault::PowerCutServer => 1,
                    Fault::PowerCutMajority => 2,
                    _ => SERVERS,
                };
                let which: Vec<usize> = (0..count).map(|k| (server + k) % SERVERS).collect();
                let cuts = self.cluster.cut_power(&which).expect("cut the servers' power");
                self.cut_bytes += cuts.iter().map(|cut| cut.bytes).sum::<u64>();
                let lost: Vec<String> = which
                    .iter()
                    .zip(&cuts)
                    .map(|(i, cut)| {
                        let mut kinds: Vec<_> = cut.by_kind.iter().collect();
                        kinds.sort_by_key(|(_, (_, bytes))| std::cmp::Reverse(*bytes));
                        let kinds: Vec<String> = kinds
                            .iter()
                            .take(4)
                            .map(|(kind, (files, bytes))| format!("{kind} ×{files} {bytes} B"))
                            .collect();
                        format!(
                            "n{i} lost {} unsynced bytes of {} files: {}",
                            cut.bytes,
                            cut.files,
                            kinds.join(", ")
                        )
                    })
                    .collect();
                std::thread::sleep(hold);
                let slow = self.restart_servers(&which);
                format!("power cut ({}), restarted{slow}", lost.join(", "))
            }
            Fault::KillNode => {
                let _ = self.nodes[node].child.kill();
                let _ = self.nodes[node].child.wait();
                std::thread::sleep(hold);
                let url = self.node_urls[node].clone();
                self.nodes[node].restart(&url);
                format!("{party}'s node killed and restarted")
            }
        };
        format!("{what} for {} ms", hold.as_millis())
    }
}

/// The newest message block of `stream` in a server's store (`<store>/**/streams/<stream>/msgs/<n>.blk`).
fn last_block(store: &std::path::Path, stream: &str) -> Option<std::path::PathBuf> {
    fn find(dir: &std::path::Path, stream: &str, depth: usize) -> Option<std::path::PathBuf> {
        let candidate = dir.join("streams").join(stream).join("msgs");
        if candidate.is_dir() {
            return Some(candidate);
        }
        if depth == 0 {
            return None;
        }
        std::fs::read_dir(dir)
            .ok()?
            .flatten()
            .filter(|e| e.path().is_dir())
            .find_map(|e| find(&e.path(), stream, depth - 1))
    }
    let msgs = find(store, stream, 3)?;
    std::fs::read_dir(msgs)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter_map(|p| {
            let n: u64 = p.file_name()?.to_str()?.strip_suffix(".blk")?.parse().ok()?;
            Some((n, p))
        })
        .max_by_key(|(n, _)| *n)
        .map(|(_, p)| p)
}

/// The writers' and the fleet's shared record.
#[derive(Default)]
struct Record {
    ops: Vec<Op>,
    /// Per writer, when its last acknowledged write ended (ms since the run began).
    last_ok_ms: BTreeMap<usize, u64>,
    /// The fleet gateway's flushes published and failed.
    flushes: (u64, u64),
    /// When its last flush was published (ms since the run began).
    last_flush_ms: Option<u64>,
    /// The heartbeat time (Unix ms) of its last published flush.
    last_heartbeat_ms: i64,
}

fn lock(record: &Mutex<Record>) -> std::sync::MutexGuard<'_, Record> {
    record.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The version a refusal names ("the case is at version N, ...").
fn version_named(message: &str) -> Option<u64> {
    let rest = message.split("the case is at version ").nth(1)?;
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// One writer: conditional appends on its own cases through its node until `stop`.
async fn writer(
    index: usize,
    channel: tonic::transport::Channel,
    purpose: &'static str,
    seed: u64,
    began: Instant,
    record: Arc<Mutex<Record>>,
    stop: Arc<AtomicBool>,
) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ (index as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let cases: Vec<uuid::Uuid> = (0..CASES_PER_WRITER)
        .map(|_| uuid::Uuid::from_u128(rng.r#gen()))
        .collect();
    let mut known: BTreeMap<uuid::Uuid, u64> = cases.iter().map(|c| (*c, 0)).collect();
    let since = |t: Instant| t.duration_since(began).as_millis() as u64;
    while !stop.load(Ordering::SeqCst) {
        let case = cases[rng.gen_range(0..cases.len())];
        let id = uuid::Uuid::from_u128(rng.r#gen());
        let expected = known[&case];
        let event = pb::event_draft::Event::InterventionStarted(pb::InterventionStarted {
            core: Some(pb::InterventionCore {
                intervention_id: id.as_bytes().to_vec(),
                kind: pb::InterventionKind::Therapeutic as i32,
                at_ms: jiff::Timestamp::now().as_millisecond(),
                outcome: String::new(),
            }),
        });
        let invoked = Instant::now();
        let result = tokio::time::timeout(
            CALL_TIMEOUT,
            crate::record_event(&channel, case, expected, None, purpose, "chaos writer", event),
        )
        .await;
        let ended = Instant::now();
        let outcome: Outcome = match result {
            Ok(Ok(sequence)) => {
                known.insert(case, sequence);
                Outcome::Ok(sequence)
            }
            Ok(Err(status)) => {
                use tonic::Code;
                match status.code() {
                    Code::Aborted => {
                        if let Some(v) = version_named(status.message()) {
                            known.insert(case, v);
                        }
                        Outcome::Refused(status.message().to_owned())
                    }
                    Code::InvalidArgument
                    | Code::PermissionDenied
                    | Code::FailedPrecondition
                    | Code::NotFound
                    | Code::AlreadyExists
                    | Code::Unauthenticated => Outcome::Refused(format!("{:?}: {}", status.code(), status.message())),
                    // The call never reached the node: nothing was written.
                    Code::Unavailable if status.message().contains("tcp connect error") => {
                        Outcome::Refused(format!("not delivered: {}", status.message()))
                    }
                    _ => Outcome::Unknown(format!("{:?}: {}", status.code(), status.message())),
                }
            }
            Err(_) => Outcome::Unknown(format!("no answer within {CALL_TIMEOUT:?}")),
        };
        let ok = matches!(outcome, Outcome::Ok(_));
        {
            let mut r = lock(&record);
            if ok {
                r.last_ok_ms.insert(index, since(ended));
            }
            r.ops.push(Op {
                id,
                writer: index,
                case,
                expected,
                span_ms: (since(invoked), since(ended)),
                outcome,
            });
        }
        if !ok {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The fleet: its simulator stepped [`FLEET_STEP_MS`] every [`FLEET_TICK`], the fixes
/// flushed by the vendor's gateway (a failed batch is kept and sent again first), until `stop`.
async fn fleet(
    mut simulator: hru_gateway::simulate::Simulator,
    mut gateway: hru_gateway::Gateway,
    began: Instant,
    record: Arc<Mutex<Record>>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::SeqCst) {
        for f in simulator.step(FLEET_STEP_MS) {
            gateway.push(&f.device, f.victim, f.fix);
        }
        let now_ms = jiff::Timestamp::now().as_millisecond();
        let flushed = gateway.flush(now_ms).await;
        {
            let mut r = lock(&record);
            if flushed.is_ok() {
                r.flushes.0 += 1;
                r.last_flush_ms = Some(began.elapsed().as_millis() as u64);
                r.last_heartbeat_ms = now_ms;
            } else {
                r.flushes.1 += 1;
            }
        }
        tokio::time::sleep(FLEET_TICK).await;
    }
}

/// Set `interrupted` on Ctrl-C or SIGTERM: the run stops after the episode under way, heals,
/// checks what ran and stops every process it started.
async fn on_interrupt(interrupted: Arc<AtomicBool>) {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let terminated = async {
        match term.as_mut() {
            Some(t) => {
                t.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminated => {}
    }
    eprintln!("chaos: interrupted: stopping after this episode, then checking what ran");
    interrupted.store(true, Ordering::SeqCst);
}

/// Run `options.episodes` episodes and check the history.
pub fn run(options: &Options) -> Report {
    let began = Instant::now();
    let rt = crate::runtime();
    let interrupted = Arc::new(AtomicBool::new(false));
    rt.spawn(on_interrupt(interrupted.clone()));
    let mut system = System::start(options);
    system.calibrate();
    let record = Arc::new(Mutex::new(Record::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    let mut verdict = Verdict::default();
    system.services_answer(&mut verdict);
    let (directory, isa) = system.world.deployment();
    let url = system.cluster.urls().join(",");
    let positions = rt
        .block_on(hru_log::PositionLog::open(
            &url,
            None,
            isa.positions_max_age(),
            SERVERS as _,
        ))
        .expect("the position stream opens");
    let gateway = crate::vendor_gateway(&system.world, &isa, &directory, &positions);
    let simulator = system.fleet.take().expect("the fleet, once");
    tasks.push(rt.spawn(fleet(simulator, gateway, began, record.clone(), stop.clone())));
    for (i, (party, purpose)) in WRITERS.iter().enumerate() {
        let channel = rt.block_on(system.world.channel(&system.nodes[i], party));
        tasks.push(rt.spawn(writer(
            i,
            channel,
            purpose,
            options.seed,
            began,
            record.clone(),
            stop.clone(),
        )));
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(options.seed);
    let mut faults: BTreeMap<Fault, u32> = BTreeMap::new();
    // Before any fault: every writer has written.
    settle(&mut system, &record, (began, 0), &mut verdict, "the start");
    let mut episodes = 0;
    let (mut unhealthy_in_a_row, mut ended) = (0, None);
    for episode in 1..=options.episodes {
        if interrupted.load(Ordering::SeqCst) {
            break;
        }
        if unhealthy_in_a_row >= GIVE_UP_AFTER {
            let why = format!("the cluster was not healthy at the end of {GIVE_UP_AFTER} episodes in a row");
            eprintln!("chaos: {why}: the run ends here, and what ran is checked");
            ended = Some(why);
            break;
        }
        episodes = episode;
        let kinds: Vec<Fault> = if options.kinds.is_empty() {
            Fault::ALL.to_vec()
        } else {
            options.kinds.clone()
        };
        let kinds: Vec<Fault> = kinds
            .into_iter()
            .filter(|f| !f.needs_disks() || system.disks.is_ok())
            .collect();
        assert!(
            !kinds.is_empty(),
            "none of the kinds of fault asked for can be injected here: {:?}",
            system.disks
        );
        let fault = kinds[rng.gen_range(0..kinds.len())];
        // Partitions and pauses long enough, at times, for elections (a raft leader is given up
        // after 4 to 9 s unheard); a killed process stays down a moment.
        let hold = Duration::from_millis(match fault {
            Fault::KillServer
            | Fault::KillNode
            | Fault::TruncateServer
            | Fault::KillGeofence
            | Fault::PowerCutServer
            | Fault::PowerCutMajority
            | Fault::PowerCutAll => rng.gen_range(300..3_000),
            _ => rng.gen_range(1_000..8_000),
        });
        *faults.entry(fault).or_default() += 1;
        let healed_at = || began.elapsed().as_millis() as u64;
        let what = system.inject(fault, &mut rng, hold);
        let healed = healed_at();
        eprintln!("chaos: episode {episode}: {what}");
        verdict
            .stuck
            .extend(system.troubles.drain(..).map(|t| format!("episode {episode}: {t}")));
        settle(
            &mut system,
            &record,
            (began, healed),
            &mut verdict,
            &format!("episode {episode} ({what})"),
        );
        let healthy = system.cluster.nodes().iter().all(hru_testkit::NatsServer::is_healthy);
        unhealthy_in_a_row = if healthy { 0 } else { unhealthy_in_a_row + 1 };
    }
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        let _ = rt.block_on(t);
    }
    system.net.heal_all();
    let ops = std::mem::take(&mut lock(&record).ops);
    let (flushes, last_heartbeat_ms) = {
        let r = lock(&record);
        (r.flushes, r.last_heartbeat_ms)
    };
    let history = history_file(options, &ops);
    // The geofence first: it is stopped once it has decided all it will, so the log is still
    // while the rest is checked.
    let breaches = breaches(&mut system, &rt, &positions, last_heartbeat_ms, &mut verdict);
    let (events, unknown_written) = check(&system, &rt, &ops, &mut verdict);
    projections_match(&mut system, &mut verdict);
    let count = |f: fn(&Outcome) -> bool| ops.iter().filter(|o| f(&o.outcome)).count();
    Report {
        options: options.clone(),
        episodes,
        ended,
        faults,
        acknowledged: count(|o| matches!(o, Outcome::Ok(_))),
        refused: count(|o| matches!(o, Outcome::Refused(_))),
        unknown: count(|o| matches!(o, Outcome::Unknown(_))),
        unknown_written,
        events,
        flushes,
        breaches,
        cut_bytes: system.cut_bytes,
        disks: system.disks.clone(),
        elapsed: began.elapsed(),
        verdict,
        history,
    }
}

/// Wait until every writer has had a write acknowledged after `healed_ms` (ms since `began`),
/// restarting nodes that exit meanwhile; a writer that has not within [`SETTLE`] is reported
/// stuck.
fn settle(
    system: &mut System,
    record: &Mutex<Record>,
    (began, healed_ms): (Instant, u64),
    verdict: &mut Verdict,
    after: &str,
) {
    let deadline = Instant::now() + SETTLE;
    loop {
        verdict
            .exits
            .extend(system.supervise().into_iter().map(|e| format!("after {after}: {e}")));
        let mut behind: Vec<&str> = (0..WRITERS.len())
            .filter(|w| lock(record).last_ok_ms.get(w).is_none_or(|&t| t <= healed_ms))
            .map(|w| WRITERS[w].0)
            .collect();
        if lock(record).last_flush_ms.is_none_or(|t| t <= healed_ms) {
            behind.push("the fleet's gateway");
        }
        if crate::metric(system.geofence.port, "hru_geofence_ready") != 1 {
            behind.push("the geofence");
        }
        if behind.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            let names = behind;
            let at = began.elapsed().as_millis();
            let logs = system.keep_logs(&format!("stuck-at-{at}ms"));
            verdict.stuck.push(format!(
                "after {after}: {names:?} wrote nothing in {SETTLE:?} (at {at} ms; logs in {})",
                logs.display()
            ));
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Where the test artifacts go (created if missing).
fn artifacts_dir() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// What names a run's artifacts: `chaos-seed-<seed>-<sync setting>`.
fn run_name(options: &Options) -> String {
    format!(
        "chaos-seed-{}-{}",
        options.seed,
        if options.sync_always { "always" } else { "default" }
    )
}

/// `attempt` again every 500 ms until it succeeds or `deadline` has passed: its value, or its
/// last error. What is awaited is said on each retry.
fn until<T, E: std::fmt::Display>(
    deadline: Instant,
    what: &str,
    mut attempt: impl FnMut() -> Result<T, E>,
) -> Result<T, String> {
    loop {
        match attempt() {
            Ok(value) => return Ok(value),
            Err(e) if Instant::now() < deadline => {
                eprintln!("chaos: not yet: {what} ({e}); trying again");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// A server's copy of a stream: each message's sequence and the digest of its subject and content.
type StreamCopy = Vec<(u64, [u8; 32])>;

/// The copy of `HRU_EVENTS` held by the server at `url`, through sequence `last`: each message's
/// sequence and the digest of its subject and content. Read with batched direct gets from a
/// client of that server alone, which its own replica answers (a server prefers its own queue
/// subscribers, and every server holds a replica).
async fn copy_on(url: &str, last: u64) -> Result<StreamCopy, String> {
    use futures::StreamExt as _;
    use sha2::Digest as _;
    let client = async_nats::connect(url).await.map_err(|e| e.to_string())?;
    let mut copy = Vec::new();
    let mut next = 1;
    while next <= last {
        let inbox = client.new_inbox();
        let mut replies = client.subscribe(inbox.clone()).await.map_err(|e| e.to_string())?;
        let ask = serde_json::json!({ "seq": next, "batch": 1000 }).to_string();
        client
            .publish_with_reply(
                hru_broker::stream::direct_get_api(hru_broker::EVENTS_STREAM),
                inbox,
                ask.into(),
            )
            .await
            .map_err(|e| e.to_string())?;
        let from = next;
        loop {
            let reply = tokio::time::timeout(Duration::from_secs(5), replies.next())
                .await
                .map_err(|_| format!("no answer for sequence {next} within 5 s"))?
                .ok_or("the connection closed")?;
            if reply.status.is_some() {
                break; // the end of the batch (or nothing more)
            }
            // The server's own `Nats-*` headers come after any the publisher set: take the last.
            let header = |name: &str| {
                reply
                    .headers
                    .as_ref()
                    .and_then(|h| h.get_last(name))
                    .map(|v| v.as_str().to_owned())
                    .unwrap_or_default()
            };
            let seq: u64 = header("Nats-Sequence")
                .parse()
                .map_err(|_| "a direct get answered without Nats-Sequence".to_owned())?;
            let mut digest = sha2::Sha256::new();
            digest.update(header("Nats-Subject").as_bytes());
            digest.update([0]);
            digest.update(&reply.payload);
            copy.push((seq, digest.finalize().into()));
            next = seq + 1;
        }
        if next == from {
            break; // nothing at or after `next`
        }
    }
    copy.retain(|(seq, _)| *seq <= last);
    Ok(copy)
}

/// Where server copies read by [`copy_on`] differ from the first server's: the first sequence
/// each one differs at, or why it could not be read.
fn differences(copies: &[Result<StreamCopy, String>]) -> Vec<String> {
    let Some(Ok(first)) = copies.first() else {
        return vec![format!("n0's copy could not be read: {:?}", copies.first())];
    };
    let mut found = Vec::new();
    for (i, copy) in copies.iter().enumerate().skip(1) {
        match copy {
            Err(e) => found.push(format!("n{i}'s copy could not be read: {e}")),
            Ok(copy) if copy == first => {}
            Ok(copy) => {
                // The first message that differs, or else the first one only one of them holds.
                let common = first.len().min(copy.len());
                let at = first
                    .iter()
                    .zip(copy)
                    .find(|(a, b)| a != b)
                    .map(|((seq, _), _)| *seq)
                    .or_else(|| first.get(common).or(copy.get(common)).map(|(seq, _)| *seq))
                    .unwrap_or_default();
                found.push(format!(
                    "n{i}'s copy ({} messages) differs from n0's ({}) from sequence {at}",
                    copy.len(),
                    first.len()
                ));
            }
        }
    }
    found
}

/// Write the history, one operation per line, where the test artifacts go.
fn history_file(options: &Options, ops: &[Op]) -> std::path::PathBuf {
    let file = artifacts_dir().join(format!("{}.history", run_name(options)));
    let text: String = ops.iter().map(|o| o.line() + "\n").collect();
    let _ = std::fs::write(&file, text);
    file
}

/// Each node's projections, its fold killed and finished by `hru project` on its own store,
/// against a clean `hru rebuild` of the same log: the digests must be equal.
fn projections_match(system: &mut System, verdict: &mut Verdict) {
    for node in &mut system.nodes {
        let _ = node.child.kill();
        let _ = node.child.wait();
    }
    let world = &system.world;
    let keys = crate::path(world.dir.path(), "keys");
    for (party, _) in WRITERS {
        let data = world.dir.path().join(format!("node-{party}"));
        let named = std::fs::read_to_string(data.join("projections.current")).unwrap_or_default();
        let store = data.join(if named.trim() == "projections.b" {
            "projections.b"
        } else {
            "projections"
        });
        let digests = |command: &str, store: &std::path::Path| -> Result<BTreeMap<String, String>, String> {
            let out = world.run(&[
                command,
                "--party",
                party,
                "--keys",
                &keys,
                "--store",
                &store.display().to_string(),
            ]);
            if !out.status.success() {
                return Err(format!("{command}: {}", String::from_utf8_lossy(&out.stderr)));
            }
            Ok(String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| {
                    let name = l.split('\t').next()?;
                    let digest = l.split("digest ").nth(1)?;
                    Some((name.to_owned(), digest.trim().to_owned()))
                })
                .collect())
        };
        let rebuilt = world.dir.path().join(format!("rebuilt-{party}"));
        match (digests("project", &store), digests("rebuild", &rebuilt)) {
            (Ok(live), Ok(fresh)) if live == fresh && !live.is_empty() => {}
            (live, fresh) => verdict
                .projections
                .push(format!("{party}: its node's {live:?}, rebuilt {fresh:?}")),
        }
    }
}

/// Every breach decision the pure engine makes over the logged inputs (the fleet stopped), on
/// the log exactly once and none besides: how many decisions the engine makes. The geofence is
/// first given time to read everything stored (its event time reaching the heartbeat of the
/// fleet's last published flush, then nothing new decided for [`QUIET`]) and stopped with
/// SIGTERM, so that the log is still when it is read.
fn breaches(
    system: &mut System,
    rt: &tokio::runtime::Runtime,
    positions: &hru_log::PositionLog,
    last_heartbeat_ms: i64,
    verdict: &mut Verdict,
) -> usize {
    /// How long nothing new must be decided before the geofence is taken to have caught up.
    const QUIET: Duration = Duration::from_secs(3);
    let (directory, _) = system.world.deployment();
    let url = system.cluster.urls().join(",");
    let keys = system.world.keys();
    let ring = || {
        hru_runtime::deployment::key_ring(&keys, &"geofence".parse().expect("a party"))
            .expect("the geofence's key ring")
    };
    let deadline = Instant::now() + 2 * SETTLE;
    let log = match until(deadline, "the log answers", || {
        rt.block_on(hru_log::EventLog::connect(&url))
    }) {
        Ok(log) => log,
        Err(e) => {
            verdict.unreadable.push(format!(
                "the healed cluster did not answer for its log within {:?}: {e}",
                2 * SETTLE
            ));
            return 0;
        }
    };
    let read = || {
        until(deadline, "the log is read", || {
            rt.block_on(async { log.reader().replay(1, &[]).await?.try_collect::<Vec<_>>().await })
        })
        .map(|events| crate::logged_decisions(&events, &directory, &mut ring()))
        .map_err(|e| format!("the healed cluster did not serve its log: {e}"))
    };
    let inputs = until(deadline, "the geofence's inputs are read", || {
        crate::try_logged_inputs(rt, &log, positions)
            .and_then(|inputs| Ok((inputs, rt.block_on(positions.partitions())?)))
    });
    let ((events, stored), partitions) = match inputs {
        Ok(inputs) => inputs,
        Err(e) => {
            verdict
                .unreadable
                .push(format!("the healed cluster did not serve the geofence's inputs: {e}"));
            return 0;
        }
    };
    let mut want: Vec<String> = (0..partitions)
        .flat_map(|p| crate::partition_breaches(&events, &stored, &directory, &mut ring(), p, partitions))
        .filter(|b| b.case.is_some())
        .map(|b| b.message_id())
        .collect();
    want.sort();
    // Caught up: every decision the engine makes is on the log, the geofence's event time has
    // reached the last flush, and nothing new has been decided for a while.
    let mut last: Option<(BTreeMap<String, usize>, Instant)> = None;
    loop {
        verdict.exits.extend(system.supervise());
        let got = match read() {
            Ok(got) => got,
            Err(e) => {
                verdict.unreadable.push(e);
                return want.len(); // the geofence is stopped with the rest of the system
            }
        };
        let read_all = crate::metric(system.geofence.port, "hru_geofence_event_time_ms") as i64 >= last_heartbeat_ms;
        let changed = last.as_ref().is_none_or(|(before, _)| *before != got);
        if changed {
            last = Some((got.clone(), Instant::now()));
        }
        let quiet = last.as_ref().is_some_and(|(_, since)| since.elapsed() >= QUIET);
        if (read_all && quiet && want.iter().all(|id| got.contains_key(id))) || Instant::now() >= deadline {
            if !read_all {
                verdict.breaches_missed.push(format!(
                    "the geofence did not read the fleet's last flush within {:?}",
                    2 * SETTLE
                ));
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    System::pid_signal(system.geofence.child.id(), "-TERM");
    let stopping = Instant::now() + Duration::from_secs(10);
    while matches!(system.geofence.child.try_wait(), Ok(None)) && Instant::now() < stopping {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = system.geofence.child.kill();
    let _ = system.geofence.child.wait();
    let got = match read() {
        Ok(got) => got,
        Err(e) => {
            verdict.unreadable.push(e);
            return want.len();
        }
    };
    if want.is_empty() {
        verdict.breaches_missed.push(
            "the pure engine decides nothing over the logged inputs: the fleet raised no breach to compare".into(),
        );
    }
    let mut engine = want.clone();
    engine.dedup();
    for id in engine.iter().filter(|id| want.iter().filter(|w| w == id).count() > 1) {
        verdict
            .breaches_unexpected
            .push(format!("{id}: the pure engine decides it more than once"));
    }
    verdict.breaches_missed.extend(
        engine
            .iter()
            .filter(|id| !got.contains_key(*id))
            .map(|id| format!("{id}: not on the log")),
    );
    verdict.breaches_twice.extend(
        got.iter()
            .filter(|(_, n)| **n > 1)
            .map(|(id, n)| format!("{id}: on the log {n} times")),
    );
    verdict.breaches_unexpected.extend(
        got.keys()
            .filter(|id| engine.binary_search(id).is_err())
            .map(|id| format!("{id}: on the log, not decided by the pure engine")),
    );
    want.len()
}

/// Check the history against the log (read straight from the cluster once healed): the
/// number of events in it and how many unknown-outcome writes it holds.
fn check(system: &System, rt: &tokio::runtime::Runtime, ops: &[Op], verdict: &mut Verdict) -> (usize, usize) {
    let world = &system.world;
    let (directory, _) = world.deployment();
    let url = system.cluster.urls().join(",");
    // Every server's copy of the log alike, once the writes have stopped and the faults healed.
    let deadline = Instant::now() + SETTLE;
    let agreed = loop {
        let copies = system.cluster.stream_copies("HRU_EVENTS");
        if copies[0].is_some() && copies.iter().all(|c| *c == copies[0]) {
            break copies[0];
        }
        if Instant::now() >= deadline {
            verdict.divergent.push(format!(
                "(messages, first, last) per server after {SETTLE:?}: {copies:?}"
            ));
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // And alike message by message, not only in number.
    if let Some((messages, _, last)) = agreed {
        let copies: Vec<Result<StreamCopy, String>> = system
            .cluster
            .urls()
            .iter()
            .map(|url| rt.block_on(copy_on(url, last)))
            .collect();
        verdict.divergent.extend(differences(&copies));
        if let Some(Ok(first)) = copies.first()
            && first.len() as u64 != messages
        {
            verdict.divergent.push(format!(
                "n0's copy read message by message holds {} of its {messages} messages",
                first.len()
            ));
        }
    }
    // The log's whole content, once the cluster answers for it again.
    let deadline = Instant::now() + SETTLE;
    let read = until(deadline, "the log is read", || {
        rt.block_on(async {
            let log = hru_log::EventLog::connect(&url).await?;
            log.reader().replay(1, &[]).await?.try_collect::<Vec<_>>().await
        })
    });
    let entries: Vec<hru_log::LogEntry> = read.unwrap_or_else(|e| {
        // Nothing can be shown present: every acknowledged write counts as lost.
        verdict
            .unreadable
            .push(format!("the healed cluster did not serve its log: {e}"));
        Vec::new()
    });
    // What was read is the whole log, without a gap (nothing is ever deleted from it).
    let read: Vec<u64> = entries.iter().map(|e| e.sequence).collect();
    let whole = read.iter().copied().eq(1..=read.len() as u64);
    if !whole || agreed.is_some_and(|(messages, _, last)| messages != read.len() as u64 || last != read.len() as u64) {
        verdict.divergent.push(format!(
            "the log read holds {} events, sequences {:?}..{:?}, the servers' copies {agreed:?}",
            read.len(),
            read.first(),
            read.last()
        ));
    }
    let mut rings: Vec<hru_envelope::KeyRing> = WRITERS
        .iter()
        .map(|(party, _)| {
            hru_runtime::deployment::key_ring(&world.keys(), &party.parse().expect("a party")).expect("a key ring")
        })
        .collect();
    let mut chains = hru_envelope::ChainChecker::new();
    let mut written: BTreeMap<uuid::Uuid, Vec<u64>> = BTreeMap::new();
    let mut case_events: BTreeMap<uuid::Uuid, Vec<u64>> = BTreeMap::new();
    let cases: std::collections::BTreeSet<uuid::Uuid> = ops.iter().map(|o| o.case).collect();
    for e in &entries {
        let v = match hru_envelope::verify(&e.payload, &directory) {
            Ok(v) => v,
            Err(err) => {
                verdict
                    .chain_breaks
                    .push(format!("#{} does not verify: {err}", e.sequence));
                continue;
            }
        };
        if let Err(b) = chains.observe(&v.header, &v.digest) {
            verdict.chain_breaks.push(format!("#{}: {b}", e.sequence));
        }
        if v.header.event_type == EventType::KeyGranted {
            for ring in &mut rings {
                let _ = ring.ingest_grant(&v);
            }
            continue;
        }
        let Some(case) = v.header.case_id else { continue };
        if !cases.contains(&case.0) {
            continue;
        }
        if e.subject.matches(&hru_broker::Filter::case_events(case)) {
            case_events.entry(case.0).or_default().push(e.sequence);
        }
        if v.header.event_type != EventType::InterventionStarted {
            continue;
        }
        let opened = rings.iter_mut().find_map(|ring| {
            let opened = ring.open(&v);
            let core = opened.sections.iter().find(|s| s.name == "core")?;
            pb::InterventionCore::decode(core.plaintext.as_ref().ok()?.as_slice()).ok()
        });
        match opened.and_then(|c| uuid::Uuid::from_slice(&c.intervention_id).ok()) {
            Some(id) => written.entry(id).or_default().push(e.sequence),
            None => verdict
                .chain_breaks
                .push(format!("#{}: an InterventionStarted no writer's key opens", e.sequence)),
        }
    }
    let unknown_written = judge(ops, &written, &case_events, verdict);
    let audit = world.run(&["audit", "verify"]);
    if !audit.status.success() {
        verdict.audit = Some(format!(
            "{}{}",
            String::from_utf8_lossy(&audit.stdout),
            String::from_utf8_lossy(&audit.stderr)
        ));
    }
    (entries.len(), unknown_written)
}

/// Judge the history `ops` against where the log holds each operation's write (`written`: id →
/// sequences) and each case's events (`case_events`: case → sequences, in order): the findings
/// go into `verdict`; how many unknown-outcome writes are on the log.
fn judge(
    ops: &[Op],
    written: &BTreeMap<uuid::Uuid, Vec<u64>>,
    case_events: &BTreeMap<uuid::Uuid, Vec<u64>>,
    verdict: &mut Verdict,
) -> usize {
    let mut unknown_written = 0;
    for op in ops {
        let at = written.get(&op.id).map_or(&[][..], Vec::as_slice);
        if at.len() > 1 {
            verdict.duplicated.push(format!("{} at {at:?}", op.line()));
        }
        match &op.outcome {
            Outcome::Ok(_) if at.is_empty() => verdict.lost.push(op.line()),
            Outcome::Ok(seq) if !at.contains(seq) => verdict.misplaced.push(format!("{} but at {at:?}", op.line())),
            Outcome::Refused(_) if !at.is_empty() => {
                verdict.refused_but_written.push(format!("{} at {at:?}", op.line()))
            }
            Outcome::Unknown(_) if !at.is_empty() => unknown_written += 1,
            _ => {}
        }
        // Linearizable: what is on the log follows the version its writer expected.
        let on_case = case_events.get(&op.case).map_or(&[][..], Vec::as_slice);
        for &seq in at {
            let before = on_case.iter().copied().filter(|&s| s < seq).max().unwrap_or(0);
            if before != op.expected {
                verdict
                    .not_linearizable
                    .push(format!("{} is at {seq}, after case version {before}", op.line()));
            }
        }
    }
    let ids: std::collections::BTreeSet<uuid::Uuid> = ops.iter().map(|o| o.id).collect();
    for (id, at) in written {
        if !ids.contains(id) {
            verdict
                .chain_breaks
                .push(format!("{id} at {at:?} is no operation of the history"));
        }
    }
    unknown_written
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Copies alike say nothing; a copy with other content, a shorter one or an unreadable one
    /// is named with where it parts from the first server's.
    #[test]
    fn copies_are_compared_message_by_message() {
        let copy = |digests: &[u8]| -> Result<StreamCopy, String> {
            Ok(digests
                .iter()
                .enumerate()
                .map(|(i, d)| (i as u64 + 1, [*d; 32]))
                .collect())
        };
        assert!(differences(&[copy(&[1, 2, 3]), copy(&[1, 2, 3]), copy(&[1, 2, 3])]).is_empty());
        let found = differences(&[copy(&[1, 2, 3]), copy(&[1, 9, 3]), copy(&[1, 2])]);
        assert_eq!(
            found,
            [
                "n1's copy (3 messages) differs from n0's (3) from sequence 2",
                "n2's copy (2 messages) differs from n0's (3) from sequence 3"
            ]
        );
        let found = differences(&[copy(&[1]), Err("no answer".into()), copy(&[1])]);
        assert_eq!(found, ["n1's copy could not be read: no answer"]);
    }

    #[test]
    fn a_refusal_names_the_case_version() {
        assert_eq!(
            version_named("the case is at version 42, not 7; re-read it and try again"),
            Some(42)
        );
        assert_eq!(version_named("something else"), None);
    }

    fn op(n: u128, case: u128, expected: u64, outcome: Outcome) -> Op {
        Op {
            id: uuid::Uuid::from_u128(n),
            writer: 0,
            case: uuid::Uuid::from_u128(case),
            expected,
            span_ms: (0, 1),
            outcome,
        }
    }

    fn judged(ops: &[Op], written: &[(u128, &[u64])], case: &[u64]) -> (Verdict, usize) {
        let written = written
            .iter()
            .map(|(id, at)| (uuid::Uuid::from_u128(*id), at.to_vec()))
            .collect();
        let cases = [(uuid::Uuid::from_u128(100), case.to_vec())].into_iter().collect();
        let mut verdict = Verdict::default();
        let unknown = judge(ops, &written, &cases, &mut verdict);
        (verdict, unknown)
    }

    /// A history the log agrees with passes; each way a log can betray a history is named.
    #[test]
    fn the_checker_names_lost_duplicated_misplaced_refused_and_non_linearizable_writes() {
        // Case 100: writes at 3 (after 0), 7 (after 3); an unknown one landed at 9 (after 7).
        let good = [
            op(1, 100, 0, Outcome::Ok(3)),
            op(2, 100, 3, Outcome::Ok(7)),
            op(3, 100, 7, Outcome::Unknown("timed out".into())),
            op(4, 100, 7, Outcome::Refused("the case is at version 9".into())),
        ];
        let (v, unknown) = judged(&good, &[(1, &[3]), (2, &[7]), (3, &[9])], &[3, 7, 9]);
        assert!(v.safe(), "{v:?}");
        assert_eq!(unknown, 1);

        let (v, _) = judged(&good, &[(2, &[7]), (3, &[9])], &[7, 9]);
        assert_eq!(v.lost.len(), 1, "an acknowledged write missing: {v:?}");
        let (v, _) = judged(&good, &[(1, &[3]), (2, &[7, 11]), (3, &[9])], &[3, 7, 9, 11]);
        assert_eq!(v.duplicated.len(), 1, "a write twice: {v:?}");
        let (v, _) = judged(&good, &[(1, &[4]), (2, &[7]), (3, &[9])], &[4, 7, 9]);
        assert_eq!(v.misplaced.len(), 1, "acknowledged at 3, stored at 4: {v:?}");
        let (v, _) = judged(&good, &[(1, &[3]), (2, &[7]), (3, &[9]), (4, &[10])], &[3, 7, 9, 10]);
        assert_eq!(v.refused_but_written.len(), 1, "a refused write on the log: {v:?}");
        assert_eq!(
            v.not_linearizable.len(),
            1,
            "and after version 9, not the 7 it expected"
        );
        // Two writers both told they won version 3: one of them follows 7, not 3.
        let lost_update = [
            op(1, 100, 0, Outcome::Ok(3)),
            op(2, 100, 3, Outcome::Ok(7)),
            op(5, 100, 3, Outcome::Ok(8)),
        ];
        let (v, _) = judged(&lost_update, &[(1, &[3]), (2, &[7]), (5, &[8])], &[3, 7, 8]);
        assert_eq!(v.not_linearizable.len(), 1, "two winners of version 3: {v:?}");
        let (v, _) = judged(&good, &[(1, &[3]), (2, &[7]), (3, &[9]), (99, &[12])], &[3, 7, 9, 12]);
        assert_eq!(v.chain_breaks.len(), 1, "a write no operation made: {v:?}");
    }
}
