//! The `hru` command line (DESIGN §13): keys, append, replay and benchmarks.

mod append;
mod audit;
mod bundle;
mod device;
mod explain;
mod field;
mod keys;
mod linkage;
mod policies;
mod policy_cmd;
mod producer_state;
mod project;
mod replay;
mod report;
mod retention;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

pub use hru_runtime::{EXIT_FINDINGS, EXIT_USAGE};

/// HRU Backbone operator tool.
#[derive(Debug, Parser)]
#[command(name = "hru", version, about)]
pub struct Cli {
    /// NATS server URL.
    #[arg(long, global = true, env = "HRU_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats: String,
    /// A secret key file whose NATS nkey the log commands connect with (e.g. the auditor's, on a
    /// server enforcing the generated authorization); none for a server without authorization.
    #[arg(long, global = true, env = "HRU_IDENTITY")]
    pub identity: Option<PathBuf>,
    /// Directory holding directory.toml and the agreement files.
    #[arg(long, global = true, env = "HRU_POLICIES", default_value = "policies")]
    pub policies: PathBuf,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
    /// Which global flags were given on the command line (not by default or environment), so
    /// services with a configuration file let only those override it.
    #[arg(skip)]
    pub given: GivenGlobals,
}

/// Global flags given on the command line itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GivenGlobals {
    /// `--nats` was given.
    pub nats: bool,
    /// `--policies` was given.
    pub policies: bool,
}

impl Cli {
    /// Parse the process's arguments, recording which global flags were given.
    pub fn parse_args() -> Self {
        use clap::{CommandFactory as _, FromArgMatches as _, parser::ValueSource};
        let matches = Self::command().get_matches();
        let mut cli = Self::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
        let given = |id: &str| matches.value_source(id) == Some(ValueSource::CommandLine);
        cli.given = GivenGlobals {
            nats: given("nats"),
            policies: given("policies"),
        };
        cli
    }
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// For people.
    Human,
    /// One JSON object per line.
    Json,
}

impl From<Format> for hru_tools::Format {
    fn from(f: Format) -> Self {
        match f {
            Format::Human => Self::Human,
            Format::Json => Self::Json,
        }
    }
}

/// Commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Party keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Seal and append one event (JSON form of hru.v1.EventDraft).
    Append {
        /// The producing party.
        #[arg(long)]
        party: String,
        /// Directory with the party's secret key file.
        #[arg(long)]
        keys: PathBuf,
        /// Producer instance name (each instance keeps its own chain).
        #[arg(long, default_value = "cli")]
        instance: String,
        /// Append the event this many times (each a new event id), e.g. for load and demos.
        #[arg(long, default_value_t = 1)]
        repeat: u32,
        /// The event file.
        event: PathBuf,
    },
    /// Print what a party can read of the log.
    Replay {
        /// The reading party.
        #[arg(long)]
        party: String,
        /// Directory with the party's secret key file.
        #[arg(long)]
        keys: PathBuf,
        /// Only this case.
        #[arg(long)]
        case: Option<String>,
        /// From this stream sequence.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Judge retention as of this time (RFC 3339) instead of now: what expired by then is
        /// shown as erased.
        #[arg(long)]
        at: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
    },
    /// Information-sharing agreements.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Victims' paired alert devices.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Fold the log into a party's projections, resuming from their checkpoints.
    Project {
        /// The reading party.
        #[arg(long)]
        party: String,
        /// Directory with the party's secret key file.
        #[arg(long)]
        keys: PathBuf,
        /// Projection store directory.
        #[arg(long)]
        store: PathBuf,
        /// Only this projection.
        #[arg(long)]
        projection: Option<String>,
        /// Judge retention as of this time (RFC 3339) instead of now: what expired by then is
        /// not folded, and what the store folded from it is forgotten.
        #[arg(long)]
        at: Option<String>,
    },
    /// Wipe a party's projections and replay the log from sequence 1; prints their digests.
    Rebuild {
        /// The reading party.
        #[arg(long)]
        party: String,
        /// Directory with the party's secret key file.
        #[arg(long)]
        keys: PathBuf,
        /// Projection store directory.
        #[arg(long)]
        store: PathBuf,
        /// Only this projection.
        #[arg(long)]
        projection: Option<String>,
        /// Judge retention as of this time (RFC 3339) instead of now: what expired by then is
        /// not folded, and what the store folded from it is forgotten.
        #[arg(long)]
        at: Option<String>,
    },
    /// Verify the log without secret keys.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Retention: what expires when, and who has confirmed destroying their keys.
    #[command(subcommand)]
    Retention(RetentionCommand),
    /// A party's node.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Play one stalking case end to end on a local nats-server, with every service.
    Demo {
        /// Run straight through instead of pausing between steps.
        #[arg(long)]
        non_interactive: bool,
        /// After the case, keep every service and the control room's page running until a
        /// line (or the end) on standard input.
        #[arg(long)]
        hold: bool,
    },
    /// The streaming geofence.
    #[command(subcommand)]
    Geofence(GeofenceCommand),
    /// The EM gateway.
    #[command(subcommand)]
    Gateway(GatewayCommand),
    /// Benchmarks with ratios to the raw building blocks.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// The log's servers.
    #[command(subcommand)]
    Log(LogCommand),
    /// Reports from a party's own view.
    #[command(subcommand)]
    Report(ReportCommand),
}

/// `hru report` subcommands.
#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// The unit's evaluation: HTML with SVG charts, a CSV per table (small numbers suppressed)
    /// and the pseudonymised extract, from the evaluation party's own view of the log.
    Evaluation {
        /// The reading party (it must receive facts for the evaluation purpose).
        #[arg(long)]
        party: String,
        /// Directory with the party's secret key file.
        #[arg(long)]
        keys: PathBuf,
        /// First day of referrals included (YYYY-MM-DD, UTC).
        #[arg(long)]
        from: Option<String>,
        /// Last day of referrals included (YYYY-MM-DD, UTC).
        #[arg(long)]
        to: Option<String>,
        /// Figures as of this time (RFC 3339; default now): windows not closed by then are open.
        #[arg(long)]
        at: Option<String>,
        /// Directory to write (new or empty).
        #[arg(long)]
        out: PathBuf,
    },
}

/// `hru node` subcommands.
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Run a party's node (gRPC with mutual TLS, projections, access log) until Ctrl-C.
    Run {
        /// The node's TOML configuration.
        #[arg(long)]
        config: PathBuf,
    },
}

/// `hru geofence` subcommands.
#[derive(Debug, Subcommand)]
pub enum GeofenceCommand {
    /// Run the geofence until Ctrl-C.
    Run {
        /// The service's TOML configuration.
        #[arg(long)]
        config: PathBuf,
    },
    /// Replay one breach's logged decisions from the evidence each carries, through the pure
    /// engine, and tell them in plain words; exit 1 if a replay does not give the update logged.
    Explain {
        /// The reading party (one that receives breaches, e.g. police-hru or police-control).
        #[arg(long)]
        party: String,
        /// Directory with the party's secret key file.
        #[arg(long)]
        keys: PathBuf,
        /// The breach's case.
        #[arg(long)]
        case: String,
        /// The breach (episode) id.
        #[arg(long)]
        breach: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
    },
}

/// `hru gateway` subcommands. Settings come from `--config` (optional TOML: party, keys_dir,
/// policies_dir, nats_url, batch_size, linger_ms, heartbeat_ms), then `HRU_*` variables, then
/// the flags given.
#[derive(Debug, Subcommand)]
pub enum GatewayCommand {
    /// Seal vendor fixes (JSON lines of hru.v1.DeviceFixes on standard input) into position batches.
    Run {
        /// Batching and connection flags.
        #[command(flatten)]
        settings: GatewayFlags,
    },
    /// Simulated tags moving around Cheshire, through the gateway.
    Simulate {
        /// Batching and connection flags.
        #[command(flatten)]
        settings: GatewayFlags,
        /// Tags.
        #[arg(long, default_value_t = 100)]
        tags: usize,
        /// Fixes per second per tag.
        #[arg(long, default_value_t = 1.0)]
        rate: f64,
        /// Seconds to run.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Random seed (the same seed gives the same movements).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Send these tags (by index) straight to their victim's home.
        #[arg(long)]
        approach: Vec<usize>,
        /// As fast as possible instead of in real time.
        #[arg(long)]
        fast: bool,
    },
    /// Retire a gateway that is gone for good, signed by its party: the geofence stops waiting
    /// for its heartbeats (a silent gateway holds event time, and every no-communication
    /// alert, back).
    Retire {
        /// The gateway's party (default em-vendor).
        #[arg(long, default_value = "em-vendor")]
        party: String,
        /// Directory with the party's secret key file and producer stores.
        #[arg(long)]
        keys: PathBuf,
        /// The gateway's identity (`gateway_id` in its configuration).
        #[arg(long)]
        gateway: String,
        /// Why it is retired.
        #[arg(long)]
        reason: String,
    },
}

/// The gateway's flags; each given one overrides the configuration file and environment.
#[derive(Debug, Clone, clap::Args)]
pub struct GatewayFlags {
    /// The gateway's TOML configuration.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The party sealing (default em-vendor).
    #[arg(long)]
    pub party: Option<String>,
    /// Directory with the party's secret key file.
    #[arg(long)]
    pub keys: Option<PathBuf>,
    /// Fixes per batch at most (default 2000).
    #[arg(long)]
    pub batch: Option<usize>,
    /// Milliseconds the oldest fix may wait for its batch (default 10).
    #[arg(long)]
    pub linger_ms: Option<u64>,
    /// Milliseconds without fixes before a heartbeat batch (default 1000).
    #[arg(long)]
    pub heartbeat_ms: Option<u64>,
    /// The gateway's stable identity across restarts (default: the host name).
    #[arg(long)]
    pub gateway_id: Option<String>,
}

/// `hru device` subcommands.
#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// Give a victim's alert device its own broker identity (mode 0600 secret file) and print
    /// its `[[device]]` entry for directory.toml.
    Pair {
        /// The device id (as in TagFitted and ProximityRuleSet).
        #[arg(long)]
        device: String,
        /// Directory to write `device.<id>.secret` into.
        #[arg(long)]
        out: PathBuf,
    },
    /// Receive the device's alerts not yet received, in order, each once; verify each, record
    /// the device's receipt on the broker, and remember how far it got.
    Alerts {
        /// The device id.
        #[arg(long)]
        device: String,
        /// Directory holding `device.<id>.secret` and its cursor.
        #[arg(long)]
        keys: PathBuf,
        /// Keep receiving for this many seconds after catching up.
        #[arg(long, default_value_t = 0)]
        wait_s: u64,
    },
}

/// `hru keys` subcommands.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Hold a party's period keys (decision 010) in its keys directory, for a party no node or
    /// geofence holds them for: start a chain per retention class, destroy the months whose
    /// retention ended, publish the coming months' public keys. Run it at least monthly.
    Periods {
        /// The party.
        #[arg(long)]
        party: String,
        /// Directory with the party's secret key file; its period file is kept there.
        #[arg(long)]
        keys: PathBuf,
        /// Take over from another holder whose keys the log holds for this month.
        #[arg(long)]
        replace: bool,
    },
    /// Create a CA (ca.pem, ca.key; keep the key private): an agency's own with `--party`
    /// (prints the `tls_ca` line for its directory entry), else a development deployment's.
    Ca {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// The party whose CA this is.
        #[arg(long)]
        party: Option<String>,
    },
    /// Issue a party's TLS certificate from its CA (the party as a URI subject-alternative
    /// name, `urn:hru:party:<id>`), or a nats-server's from the broker's CA.
    Cert {
        /// Directory holding ca.pem and ca.key.
        #[arg(long)]
        ca: PathBuf,
        /// The party whose node the certificate is for (named by a `urn:hru:party:` URI).
        #[arg(long, required_unless_present = "server", conflicts_with = "server")]
        party: Option<String>,
        /// Or a nats-server of the cluster (its name; the certificate serves clients and routes).
        #[arg(long)]
        server: Option<String>,
        /// Host names the certificate serves (repeat).
        #[arg(long)]
        host: Vec<String>,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Output directory (<party or server>.pem, .key).
        #[arg(long)]
        out: PathBuf,
    },
    /// Generate a party's secret keys (mode 0600) and print its public directory entry.
    Generate {
        /// The party.
        #[arg(long)]
        party: String,
        /// Directory to write `<party>.secret` into.
        #[arg(long)]
        out: PathBuf,
        /// The party's data controller, for the directory entry.
        #[arg(long, default_value = "")]
        controller: String,
    },
    /// Grant the agreement's subject-linkage key to its holders (as its custodian), or the next
    /// generation to rotate it: a signed LinkageKeyGranted event (decision 020).
    Linkage {
        /// The custodian party.
        #[arg(long)]
        party: String,
        /// Directory with `<party>.secret`.
        #[arg(long)]
        keys: PathBuf,
        /// Why: "first key", or what a rotation answers.
        #[arg(long, required_unless_present = "rekey")]
        reason: Option<String>,
        /// Grant nothing: re-key every case to the newest generation (after an interrupted
        /// rotation, or to take in referrals recorded under the old generation since).
        #[arg(long, conflicts_with = "reason")]
        rekey: bool,
    },
    /// Replace all three keys of a party (signing, X25519, nkey): KeyRotated events signed by
    /// the old key; prints the party's new directory block.
    Rotate {
        /// The party.
        #[arg(long)]
        party: String,
        /// Directory with `<party>.secret`.
        #[arg(long)]
        keys: PathBuf,
    },
    /// Revoke one of a party's signing keys from a time: a KeyRevoked event.
    Revoke {
        /// The party.
        #[arg(long)]
        party: String,
        /// Directory with `<party>.secret` (the key that signs the revocation).
        #[arg(long)]
        keys: PathBuf,
        /// The key id (16 hex digits).
        #[arg(long)]
        key_id: String,
        /// From when (RFC 3339); default now. Events it signed from then on are audit findings.
        #[arg(long)]
        at: Option<String>,
        /// Why.
        #[arg(long)]
        reason: String,
    },
}

/// `hru policy` subcommands.
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Check agreement files; exit 0 clean, 1 with file:line:col errors and hints.
    Check {
        /// Files or directories (default: --policies).
        paths: Vec<PathBuf>,
        /// Directory file to check party keys against (default: directory.toml beside each path).
        #[arg(long)]
        directory: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
    },
    /// What a party receives, from whom, under which clause; what it shares and may call.
    Explain {
        /// The party.
        #[arg(long)]
        party: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
    },
    /// Record that the agreement in force is adopted: a signed PolicyAdopted event with its digest.
    Adopt {
        /// The adopting party.
        #[arg(long)]
        party: String,
        /// Directory with the party's secret key file.
        #[arg(long)]
        keys: PathBuf,
        /// Producer instance name.
        #[arg(long, default_value = "cli")]
        instance: String,
    },
    /// Generate the nats-server authorization config from the agreement in force.
    NatsConfig {
        /// Output file.
        #[arg(long)]
        out: PathBuf,
    },
}

/// `hru retention` subcommands.
#[derive(Debug, Subcommand)]
pub enum RetentionCommand {
    /// Every epoch key the log granted: its retention class and month, when its sections
    /// expire, and which holders have signed its destruction (whole log with an operator's
    /// key, a party's view with its own); then how far each party's period keys are published
    /// (`kind` "epoch" and "holder" lines in JSON).
    Status {
        /// Only the epochs this party holds (as producer or member).
        #[arg(long)]
        party: Option<String>,
        /// As of this time (RFC 3339) instead of now.
        #[arg(long)]
        at: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
    },
    /// Destroy a producer's epoch keys whose retention has ended (every CLI producer also does
    /// this whenever it is used), each announced by a signed EpochKeyDestroyed.
    Destroy {
        /// The producer whose store to sweep.
        #[command(flatten)]
        producer: ProducerFlags,
        /// As of this time (RFC 3339) instead of now: keys expiring by then are destroyed
        /// early (destroying early erases sooner; it never keeps anything longer).
        #[arg(long)]
        at: Option<String>,
    },
    /// Place a legal hold on a case: its sections stay readable past their retention by the
    /// parties already given them, until the hold is released.
    Hold {
        /// The producer placing the hold (it signs it and keeps its own held keys).
        #[command(flatten)]
        producer: ProducerFlags,
        /// The case to hold.
        #[arg(long)]
        case: String,
        /// Why the case is held (proceedings, inquiry, complaint).
        #[arg(long)]
        reason: String,
        /// Who ordered or authorised the hold.
        #[arg(long)]
        authority: String,
        /// When the hold must be reviewed, YYYY-MM-DD.
        #[arg(long)]
        review: String,
    },
    /// Release a legal hold the party placed.
    Release {
        /// The producer of the party that placed it (it signs the release and drops its own
        /// held keys).
        #[command(flatten)]
        producer: ProducerFlags,
        /// The hold id (`hru retention status` lists them).
        #[arg(long)]
        hold: String,
        /// Why it is released.
        #[arg(long)]
        reason: String,
    },
}

/// A CLI producer: its party, the directory of its keys and stores, its instance.
#[derive(Debug, Clone, clap::Args)]
pub struct ProducerFlags {
    /// The producing party.
    #[arg(long)]
    pub party: String,
    /// Directory with the party's secret key file and producer stores.
    #[arg(long)]
    pub keys: PathBuf,
    /// The producer instance.
    #[arg(long, default_value = "cli")]
    pub instance: String,
}

/// `hru audit` subcommands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Who consulted or disclosed a case, when, under which clause and purpose.
    Access {
        /// The case.
        #[arg(long)]
        case: String,
        /// A party the access records are shared with (the DPO's).
        #[arg(long, default_value = "police-hru")]
        party: String,
        /// Directory with that party's secret key file.
        #[arg(long)]
        keys: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
    },
    /// Check signatures, chains, subjects and audiences; exit 0 clean, 1 with findings.
    Verify {
        /// First stream sequence.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Last stream sequence.
        #[arg(long)]
        to: Option<u64>,
        /// A witness file (`hru audit witness --out`): every checkpoint in it must still be in the log.
        #[arg(long)]
        witness: Option<PathBuf>,
        /// A producer whose latest checkpoint is older than this many seconds is a finding.
        #[arg(long)]
        max_checkpoint_age_s: Option<u64>,
        /// An epoch whose retention ended more than this many days ago without every holder's
        /// signed destruction is a finding.
        #[arg(long, default_value_t = 30)]
        destruction_grace_days: u32,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
    },
    /// Append a signed checkpoint of a producer's chain head.
    Checkpoint {
        /// The producer's party.
        #[arg(long)]
        party: String,
        /// Directory with the party's secret key file.
        #[arg(long)]
        keys: PathBuf,
        /// The producer instance (its chain).
        #[arg(long, default_value = "cli")]
        instance: String,
    },
    /// One case's evidence in one file: its envelopes, the grants, control events and chains
    /// that check them, the directory and every agreement (run as the auditor).
    Bundle {
        /// The case.
        #[arg(long)]
        case: String,
        /// The bundle file to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Verify an evidence bundle with nothing else (no broker, no secret key); exit 0 clean,
    /// 1 with findings.
    VerifyBundle {
        /// The bundle file.
        file: PathBuf,
        /// The case it must be of.
        #[arg(long)]
        case: Option<String>,
        /// A policies directory you trust (directory.toml and agreements): the bundle's must be
        /// the same.
        #[arg(long)]
        trust: Option<PathBuf>,
        /// A witness file your own witness kept (`hru audit witness --out`): only its
        /// checkpoints count as witnessed, and the bundle must agree with each it holds.
        #[arg(long)]
        witness: Option<PathBuf>,
        /// Also a finding: a case envelope not yet under a checkpoint a witness vouched for.
        #[arg(long)]
        require_witnessed: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
    },
    /// Countersign every checkpoint of other parties the log holds consistently, and keep a copy.
    Witness {
        /// The witnessing party.
        #[arg(long)]
        party: String,
        /// Directory with the party's secret key file.
        #[arg(long)]
        keys: PathBuf,
        /// The witness file (JSON lines), appended to.
        #[arg(long)]
        out: PathBuf,
    },
}

/// `hru log` subcommands.
#[derive(Debug, Subcommand)]
pub enum LogCommand {
    /// Create (or check and update) the shared streams and every party's view stream of the
    /// agreement in force: the provisioner's one-shot job.
    Provision {
        /// Directory with `provisioner.secret`, to connect with the provisioner's nkey (leave
        /// out for a server without authorization).
        #[arg(long)]
        keys: Option<PathBuf>,
        /// Replicas of each stream (3 on a cluster).
        #[arg(long, default_value_t = 1)]
        replicas: usize,
        /// Partitions of the position stream (geofence instances share them; chosen once,
        /// with the stream).
        #[arg(long, default_value_t = 1)]
        partitions: u32,
    },
    /// Write a nats-server config: JetStream synced always, optional cluster, authorization
    /// and TLS.
    ServerConfig(Box<ServerConfigArgs>),
}

/// `hru log server-config` arguments.
#[derive(Debug, clap::Args)]
pub struct ServerConfigArgs {
    /// Server name (unique in the cluster).
    #[arg(long)]
    name: String,
    /// JetStream store directory.
    #[arg(long)]
    store: String,
    /// Client listen address.
    #[arg(long, default_value = "0.0.0.0:4222")]
    listen: String,
    /// Monitoring (health) listen address.
    #[arg(long, default_value = "0.0.0.0:8222")]
    http: String,
    /// Cluster name, to make this a cluster node.
    #[arg(long)]
    cluster: Option<String>,
    /// Route listen address of a cluster node.
    #[arg(long, default_value = "0.0.0.0:6222")]
    cluster_listen: String,
    /// Routes to the other nodes (repeat), e.g. nats-route://n2:6222.
    #[arg(long)]
    route: Vec<String>,
    /// Authorization file to include (from `hru policy nats-config`), relative to the config.
    #[arg(long)]
    auth: Option<String>,
    /// Leave the server's default sync interval (acknowledged no longer means on disk).
    #[arg(long)]
    sync_default: bool,
    /// This server's certificate (PEM): clients then connect over TLS only, and routes are
    /// mutual TLS (with --tls-key and --tls-ca).
    #[arg(long, requires_all = ["tls_key", "tls_ca"])]
    tls_cert: Option<String>,
    /// This server's private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<String>,
    /// The CA (PEM) route peers' certificates, and clients' when --tls-verify-clients, must
    /// chain to.
    #[arg(long, requires = "tls_cert")]
    tls_ca: Option<String>,
    /// Clients must present a certificate from --tls-ca too (their nkey still decides).
    #[arg(long, requires = "tls_cert")]
    tls_verify_clients: bool,
    /// Output file.
    #[arg(long)]
    out: PathBuf,
}

/// `hru bench` subcommands.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Append rate through the producer beside raw JetStream publish, on local servers.
    Ingest {
        /// Events per measurement.
        #[arg(long, default_value_t = 50_000)]
        events: usize,
        /// Events per group commit.
        #[arg(long, default_value_t = 500)]
        group: usize,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
    },
    /// Audit-verification rate beside raw verify_strict and batch verification.
    Verify {
        /// Envelopes to verify.
        #[arg(long, default_value_t = 50_000)]
        events: usize,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
    },
    /// Replay + verify + open rate beside raw reads and raw signature checks.
    Replay {
        /// Events in the log.
        #[arg(long, default_value_t = 100_000)]
        events: usize,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
    },
    /// Geofence engine beside raw R-tree + point-in-polygon, memory, and the service end to end.
    Geofence {
        /// Fixes for the engine and throughput measurements.
        #[arg(long, default_value_t = 1_000_000)]
        fixes: usize,
        /// Only the engine beside the raw building block: no broker, so it runs under
        /// `valgrind --tool=callgrind --toggle-collect='*engine_pass*' --toggle-collect='*raw_pass*'`.
        #[arg(long)]
        engine_only: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
    },
    /// Geofence instances sharing the position stream's partitions: fixes/s end to end with
    /// 1, 2 and 3 instances beside the gateway's publish rate, and the handover when one dies.
    GeofencePartitions {
        /// Fixes for each throughput measurement.
        #[arg(long, default_value_t = 500_000)]
        fixes: usize,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
    },
    /// Geofence restart after a long run for a large fleet: ready time and peak memory from a
    /// snapshot beside a full replay, both real processes.
    GeofenceRestart {
        /// Tags in the fleet (one fix every 30 s each).
        #[arg(long, default_value_t = 10_000)]
        tags: usize,
        /// Fixes before the first start.
        #[arg(long, default_value_t = 20_000_000)]
        fixes: usize,
        /// Fixes published while the geofence is down, before the restart from the snapshot.
        #[arg(long, default_value_t = 200_000)]
        tail: usize,
        /// The geofence follows the fixes as they are published instead of replaying them all
        /// on a first start (for runs too large to replay in memory, e.g. a week: 201.6M fixes).
        #[arg(long)]
        live: bool,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
    },
    /// Seal and open rates of a 1 KiB, two-section event beside raw ed25519 sign and verify.
    Seal {
        /// Seconds to run each measurement.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
    },
}

/// `hru node run`: load the configuration and serve until Ctrl-C.
async fn node_run(path: &std::path::Path) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let config = hru_node::NodeConfig::load(&text, &path.display().to_string(), |k| std::env::var(k).ok())?;
    let listener = tokio::net::TcpListener::bind(&config.listen).await?;
    eprintln!("hru node for {} listening on {}", config.party, listener.local_addr()?);
    hru_node::run(config, listener, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}

/// Log filter (e.g. `info`, `hru_log=debug`).
const ENV_LOG: &str = "HRU_LOG";
/// Log format: `human` (default) or `json` (one object per line).
const ENV_LOG_FORMAT: &str = "HRU_LOG_FORMAT";

/// The binary: parse the arguments, set up logs on stderr, run the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse_args();
    let filter = tracing_subscriber::EnvFilter::try_from_env(ENV_LOG).unwrap_or_else(|_| "warn".into());
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    if std::env::var(ENV_LOG_FORMAT).is_ok_and(|f| f == "json") {
        logs.json().init();
    } else {
        logs.init();
    }
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime.block_on(run(cli)),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// Run a parsed command line; returns the process exit code.
pub async fn run(cli: Cli) -> ExitCode {
    let broker = match Broker::new(&cli.nats, cli.identity.as_deref()) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let result = match cli.command {
        Command::Keys(KeysCommand::Generate { party, out, controller }) => keys::generate(&party, &out, &controller),
        Command::Keys(KeysCommand::Ca { out, party }) => keys::ca(&out, party.as_deref()),
        Command::Device(DeviceCommand::Pair { device, out }) => device::pair(&device, &out),
        Command::Device(DeviceCommand::Alerts { device, keys, wait_s }) => {
            device::alerts(&cli.nats, &cli.policies, &device, &keys, wait_s).await
        }
        Command::Keys(KeysCommand::Rotate { party, keys }) => keys::rotate(&broker, &cli.policies, &party, &keys).await,
        Command::Keys(KeysCommand::Linkage {
            party,
            keys,
            reason,
            rekey,
        }) => match (rekey, reason) {
            (true, _) => linkage::rekey(&broker, &cli.policies, &party, &keys).await,
            (false, reason) => {
                linkage::grant(&broker, &cli.policies, &party, &keys, reason.as_deref().unwrap_or("")).await
            }
        },
        Command::Keys(KeysCommand::Periods { party, keys, replace }) => {
            retention::hold_periods(&broker, &cli.policies, &party, &keys, replace).await
        }
        Command::Keys(KeysCommand::Revoke {
            party,
            keys,
            key_id,
            at,
            reason,
        }) => keys::revoke(&broker, &cli.policies, &party, &keys, &key_id, at.as_deref(), &reason).await,
        Command::Keys(KeysCommand::Cert {
            ca,
            party,
            server,
            host,
            days,
            out,
        }) => match (party.as_deref(), server.as_deref()) {
            (Some(p), _) => keys::cert(&ca, keys::Holder::Party(p), &host, days, &out),
            (None, Some(s)) => keys::cert(&ca, keys::Holder::Server(s), &host, days, &out),
            (None, None) => Err(anyhow::anyhow!("give --party or --server")),
        },
        Command::Node(NodeCommand::Run { config }) => node_run(&config).await,
        Command::Geofence(GeofenceCommand::Run { config }) => field::geofence_run(&config).await,
        Command::Geofence(GeofenceCommand::Explain {
            party,
            keys,
            case,
            breach,
            format,
        }) => explain::run(&broker, &cli.policies, &party, &keys, &case, &breach, format).await,
        Command::Demo { non_interactive, hold } => {
            let interactive = !non_interactive && std::io::IsTerminal::is_terminal(&std::io::stdin());
            hru_tools::demo::run(&cli.policies, interactive, hold || interactive).await
        }
        Command::Gateway(GatewayCommand::Run { settings }) => {
            match field::gateway(&settings, &cli.nats, &cli.policies, cli.given).await {
                Ok(gw) => field::gateway_run(gw).await,
                Err(e) => Err(e),
            }
        }
        Command::Gateway(GatewayCommand::Retire {
            party,
            keys,
            gateway,
            reason,
        }) => field::retire(&broker, &cli.policies, &party, &keys, &gateway, &reason).await,
        Command::Gateway(GatewayCommand::Simulate {
            settings,
            tags,
            rate,
            seconds,
            seed,
            approach,
            fast,
        }) => match field::gateway(&settings, &cli.nats, &cli.policies, cli.given).await {
            Ok(gw) => {
                let sim = hru_gateway::run::Simulation {
                    tags,
                    rate_hz: rate,
                    seconds,
                    seed,
                    approach,
                    fast,
                };
                field::gateway_simulate(gw, sim).await
            }
            Err(e) => Err(e),
        },
        Command::Append {
            party,
            keys,
            instance,
            repeat,
            event,
        } => append::run(&broker, &cli.policies, &party, &keys, &instance, &event, repeat).await,
        Command::Replay {
            party,
            keys,
            case,
            from,
            at,
            format,
        } => {
            replay::run(
                &broker,
                &cli.policies,
                &party,
                &keys,
                case.as_deref(),
                from,
                at.as_deref(),
                format,
            )
            .await
        }
        Command::Bench(BenchCommand::Seal { seconds, format }) => hru_tools::bench::seal(seconds, format.into()),
        Command::Bench(BenchCommand::GeofenceRestart {
            tags,
            fixes,
            tail,
            live,
            format,
        }) => hru_tools::bench_restart::geofence_restart(&cli.policies, tags, fixes, tail, live, format.into()).await,
        Command::Bench(BenchCommand::GeofencePartitions { fixes, format }) => {
            hru_tools::bench_partitions::geofence_partitions(&cli.policies, fixes, format.into()).await
        }
        Command::Bench(BenchCommand::Geofence {
            fixes,
            engine_only,
            format,
        }) => hru_tools::bench_geo::geofence(&cli.policies, fixes, engine_only, format.into()).await,
        Command::Retention(RetentionCommand::Status { party, at, format }) => {
            retention::status(&broker, &cli.policies, party.as_deref(), at.as_deref(), format).await
        }
        Command::Retention(RetentionCommand::Destroy { producer: p, at }) => {
            retention::destroy(&broker, &cli.policies, &p.party, &p.keys, &p.instance, at.as_deref()).await
        }
        Command::Retention(RetentionCommand::Hold {
            producer: p,
            case,
            reason,
            authority,
            review,
        }) => {
            let placement = retention::Placement {
                case,
                reason,
                authority,
                review_date: review,
            };
            retention::hold(&broker, &cli.policies, &p.party, &p.keys, &p.instance, placement).await
        }
        Command::Retention(RetentionCommand::Release {
            producer: p,
            hold,
            reason,
        }) => retention::release(&broker, &cli.policies, &p.party, &p.keys, &p.instance, &hold, &reason).await,
        Command::Audit(AuditCommand::Verify {
            from,
            to,
            witness,
            max_checkpoint_age_s,
            destruction_grace_days,
            format,
        }) => {
            let checks = audit::Checks {
                witness,
                max_checkpoint_age_s,
                destruction_grace_days,
            };
            audit::verify(&broker, &cli.policies, from, to, &checks, format).await
        }
        Command::Audit(AuditCommand::Checkpoint { party, keys, instance }) => {
            audit::checkpoint(&broker, &cli.policies, &party, &keys, &instance).await
        }
        Command::Audit(AuditCommand::Witness { party, keys, out }) => {
            audit::witness(&broker, &cli.policies, &party, &keys, &out).await
        }
        Command::Audit(AuditCommand::Bundle { case, out }) => bundle::make(&broker, &cli.policies, &case, &out).await,
        Command::Audit(AuditCommand::VerifyBundle {
            file,
            case,
            trust,
            witness,
            require_witnessed,
            format,
        }) => bundle::verify(
            &file,
            &bundle::Anchors {
                case: case.as_deref(),
                trust: trust.as_deref(),
                witness: witness.as_deref(),
                require_witnessed,
            },
            format,
        ),
        Command::Audit(AuditCommand::Access {
            case,
            party,
            keys,
            format,
        }) => audit::access(&broker, &cli.policies, &party, &keys, &case, format).await,
        Command::Report(ReportCommand::Evaluation {
            party,
            keys,
            from,
            to,
            at,
            out,
        }) => {
            report::evaluation(
                &broker,
                report::EvaluationArgs {
                    policies: &cli.policies,
                    party: &party,
                    keys: &keys,
                    from: from.as_deref(),
                    to: to.as_deref(),
                    out: &out,
                    at: at.as_deref(),
                },
            )
            .await
        }
        Command::Project {
            party,
            keys,
            store,
            projection,
            at,
        } => {
            project::run(
                &broker,
                &cli.policies,
                &party,
                &keys,
                &store,
                projection.as_deref(),
                false,
                at.as_deref(),
            )
            .await
        }
        Command::Rebuild {
            party,
            keys,
            store,
            projection,
            at,
        } => {
            project::run(
                &broker,
                &cli.policies,
                &party,
                &keys,
                &store,
                projection.as_deref(),
                true,
                at.as_deref(),
            )
            .await
        }
        Command::Log(LogCommand::Provision {
            keys,
            replicas,
            partitions,
        }) => provision(&broker, &cli.policies, keys.as_deref(), replicas, partitions).await,
        Command::Log(LogCommand::ServerConfig(args)) => {
            let ServerConfigArgs {
                name,
                store,
                listen,
                http,
                cluster,
                cluster_listen,
                route,
                auth,
                sync_default,
                tls_cert,
                tls_key,
                tls_ca,
                tls_verify_clients,
                out,
            } = *args;
            let tls = match (tls_cert, tls_key, tls_ca) {
                (Some(cert), Some(key), Some(ca)) => Some(hru_broker::server::ServerTls {
                    cert,
                    key,
                    ca,
                    verify: tls_verify_clients,
                }),
                _ => None,
            };
            let node = hru_broker::server::NodeConfig {
                server_name: Some(name),
                listen,
                http: Some(http),
                store_dir: store,
                sync_always: !sync_default,
                tls: tls.clone(),
                cluster: cluster.map(|name| hru_broker::server::ClusterConfig {
                    name,
                    listen: cluster_listen,
                    routes: route,
                    tls,
                    advertise: None,
                    no_advertise: false,
                }),
                authorization: auth,
                ..Default::default()
            };
            std::fs::write(&out, hru_broker::server::render(&node))
                .map(|()| ExitCode::SUCCESS)
                .map_err(|e| anyhow::anyhow!("writing {}: {e}", out.display()))
        }
        Command::Bench(BenchCommand::Ingest { events, group, format }) => {
            hru_tools::bench::ingest(events, group, format.into()).await
        }
        Command::Bench(BenchCommand::Replay { events, format }) => {
            hru_tools::bench::replay(events, format.into()).await
        }
        Command::Bench(BenchCommand::Verify { events, format }) => {
            hru_tools::bench::verify_bench(events, format.into())
        }
        Command::Policy(PolicyCommand::Check {
            paths,
            directory,
            format,
        }) => policy_cmd::check(&paths, &cli.policies, directory.as_deref(), format),
        Command::Policy(PolicyCommand::Explain { party, format }) => policy_cmd::explain(&cli.policies, &party, format),
        Command::Policy(PolicyCommand::NatsConfig { out }) => policy_cmd::nats_config_cmd(&cli.policies, &out),
        Command::Policy(PolicyCommand::Adopt { party, keys, instance }) => {
            policy_cmd::adopt(&broker, &cli.policies, &party, &keys, &instance).await
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// Where the log is and whom the log commands connect as.
pub(crate) struct Broker {
    url: String,
    identity: Option<hru_log::BrokerIdentity>,
}

impl Broker {
    /// The broker at `url`, connecting with the nkey of the secret key file `identity`, if any.
    fn new(url: &str, identity: Option<&std::path::Path>) -> anyhow::Result<Self> {
        let identity = match identity {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("--identity {}: {e}", path.display()))?;
                let secrets = hru_envelope::PartySecrets::from_toml(&text, &path.display().to_string())?;
                Some(secrets.broker_identity())
            }
            None => None,
        };
        Ok(Self {
            url: url.to_owned(),
            identity,
        })
    }

    /// The log as the identity may read it: a party's key reads its own view (and appends as
    /// that party); no identity, the provisioner's or the auditor's reads `HRU_EVENTS` itself.
    pub(crate) async fn log(&self) -> anyhow::Result<CliLog> {
        match self.party() {
            Some(party) => Ok(CliLog::View(
                hru_log::PartyView::open(&self.url, self.identity.as_ref(), &party).await?,
            )),
            None => Ok(CliLog::Whole(
                hru_log::EventLog::open(&self.url, self.identity.as_ref(), 1).await?,
            )),
        }
    }

    /// The party whose key `--identity` is, when it is a party's (not an operator's).
    fn party(&self) -> Option<hru_domain::PartyId> {
        let id = &self.identity.as_ref()?.id;
        if id == hru_broker::PROVISIONER || id == hru_broker::AUDITOR {
            return None;
        }
        id.parse().ok()
    }

    /// Refuse, before anything is sealed, a command acting as `party` under another party's key.
    pub(crate) fn check_acting_as(&self, party: &hru_domain::PartyId) -> anyhow::Result<()> {
        match self.party() {
            Some(own) if &own != party => {
                anyhow::bail!("--identity is {own}'s key: it cannot act as {party}; give {party}'s own secret key file")
            }
            _ => Ok(()),
        }
    }
}

/// The log a CLI command reads and appends through.
pub(crate) enum CliLog {
    /// `HRU_EVENTS` itself.
    Whole(hru_log::EventLog),
    /// A party's view (its own envelopes and what the agreement gives it).
    View(hru_log::PartyView),
}

impl CliLog {
    /// Whether this is the whole log (so every producer's chain is checkable), not a view.
    pub(crate) fn is_whole(&self) -> bool {
        matches!(self, Self::Whole(_))
    }

    /// Read the log's key events ahead into `read`: a revocation then reaches what the revoked
    /// key signed before the revocation reached the log (decision 007). Then the legal holds'
    /// grants, which follow the events they open (decision 010).
    pub(crate) async fn foresee_keys(&self, read: &mut hru_reader::ReadPath) -> anyhow::Result<Vec<hru_log::LogEntry>> {
        use futures::TryStreamExt as _;
        use hru_log::SharedLog as _;
        let mut foresight = read.key_history().clone();
        let mut events = self.reader().replay(1, &[hru_broker::Filter::all_control()]).await?;
        while let Some(e) = events.try_next().await? {
            foresight.learn(e.sequence, &e.payload);
        }
        read.foresee(&foresight);
        let held = hru_log::holds::held_grants(self.reader()).await?;
        for e in &held {
            let incoming = hru_reader::Incoming::logged(e.sequence, e.subject.as_str(), &e.payload, e.stored);
            if let Err(refusal) = read.read(&incoming) {
                eprintln!("a legal hold's grant refused: {refusal}");
            }
        }
        Ok(held)
    }
}

/// A command's `--at` as Unix ms (now when absent).
pub(crate) fn at_ms(at: Option<&str>) -> anyhow::Result<i64> {
    Ok(match at {
        Some(t) => t
            .parse::<jiff::Timestamp>()
            .map_err(|e| anyhow::anyhow!("--at must be an RFC 3339 time such as 2034-01-01T00:00:00Z: {e}"))?
            .as_millisecond(),
        None => jiff::Timestamp::now().as_millisecond(),
    })
}

/// How long a command waits for a party's view to catch up with the log before reading it.
const VIEW_CATCH_UP: std::time::Duration = std::time::Duration::from_secs(5);

impl CliLog {
    /// Wait (up to [`VIEW_CATCH_UP`]) while the server reports a party's view lagging the
    /// log (a view copies the log a moment behind it; the server learns of a lag only as the
    /// copies arrive, so an event appended a moment ago may still be missing). Warns when it
    /// still lags.
    pub(crate) async fn catch_up(&self) -> anyhow::Result<()> {
        use hru_log::SharedLog as _;
        if !self.reader().wait_caught_up(VIEW_CATCH_UP).await? {
            eprintln!("warning: the view still lags the log after {VIEW_CATCH_UP:?}: the newest events may be missing");
        }
        Ok(())
    }
}

impl hru_log::SharedLog for CliLog {
    fn appender(&self) -> &hru_log::Appender {
        match self {
            Self::Whole(l) => l.appender(),
            Self::View(l) => l.appender(),
        }
    }
    fn reader(&self) -> &hru_log::Reader {
        match self {
            Self::Whole(l) => l.reader(),
            Self::View(l) => l.reader(),
        }
    }
}

/// `hru log provision`: the streams and views of the agreement in force (as the provisioner of
/// `--keys`, else as `--identity`).
async fn provision(
    nats: &Broker,
    policies: &std::path::Path,
    keys: Option<&std::path::Path>,
    replicas: usize,
    partitions: u32,
) -> anyhow::Result<ExitCode> {
    let directory = policies::directory(policies)?;
    let set = policies::agreements(policies, &directory)?;
    let isa = policies::in_force(&set, jiff::Timestamp::now().as_millisecond())?;
    let identity = match keys {
        Some(dir) => Some(keys::load(dir, &hru_broker::PROVISIONER.parse()?)?.broker_identity()),
        None => nats.identity.clone(),
    };
    let client = hru_log::connect(&nats.url, identity.as_ref()).await?;
    let retired = hru_broker::provision(
        &client,
        &isa.broker_rights(),
        isa.positions_max_age(),
        replicas,
        partitions,
    )
    .await?;
    let devices: Vec<String> = directory.devices().map(|(d, _)| d.to_string()).collect();
    hru_broker::provision_devices(&client, &devices, isa.alerts_max_age(), replicas).await?;
    println!(
        "provisioned HRU_EVENTS, HRU_POSITIONS ({partitions} partitions), {} view streams and {} device streams for {} v{} (replicas {replicas})",
        isa.parties.len(),
        devices.len(),
        isa.id,
        isa.version
    );
    for view in retired {
        println!(
            "retired {view}: its party is no party of {} v{}; it copies nothing more from the log",
            isa.id, isa.version
        );
    }
    Ok(ExitCode::SUCCESS)
}
