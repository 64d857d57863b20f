//! The shared event log on NATS JetStream (DESIGN §8): the server-version floor, the
//! `HRU_EVENTS` stream, append with `Nats-Msg-Id` = event id, and ordered replay.

pub mod metrics_http;
mod positions;
mod producer;
pub mod server_config;

pub use positions::PositionLog;
pub use producer::{EventToSeal, GroupSealer, Producer, SealedGroup, StoreError};

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures::StreamExt as _;
use hru_envelope::SealedEnvelope;

/// Name of the event stream.
pub const EVENTS_STREAM: &str = "HRU_EVENTS";
/// Subjects of the event stream: case events, key grants, public control events.
pub const EVENT_SUBJECTS: [&str; 4] = ["hru.evt.>", "hru.acc.>", "hru.key.>", "hru.ctl.>"];
/// Name of the position stream.
pub const POSITIONS_STREAM: &str = "HRU_POSITIONS";
/// Subjects of the position stream.
pub const POSITION_SUBJECTS: [&str; 1] = ["hru.pos.>"];

/// Oldest nats-server accepted: older servers silently ignore fields they do not know.
pub const MIN_SERVER: (u64, u64) = (2, 11);
/// Shortest duplicate window accepted for exactly-once publish on retry.
pub const MIN_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// What went wrong talking to the log; each variant says what to check.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// No connection to the server.
    #[error("cannot connect to NATS at {url}: {reason}; is nats-server running (scripts/tools.sh installs it)?")]
    Connect {
        /// The URL tried.
        url: String,
        /// The client's error.
        reason: String,
    },
    /// The server is older than the floor.
    #[error("nats-server {found} is too old: HRU needs {}.{} or newer (older servers drop consumer filters silently)", MIN_SERVER.0, MIN_SERVER.1)]
    ServerTooOld {
        /// The version the server reported.
        found: String,
    },
    /// An existing stream is configured unsafely.
    #[error("stream {stream} is unsafe: {field} is {found}, must be {required}")]
    UnsafeStream {
        /// Stream name.
        stream: &'static str,
        /// The config field.
        field: &'static str,
        /// What it is.
        found: String,
        /// What it must be.
        required: String,
    },
    /// A JetStream call failed.
    #[error("{operation} failed: {reason}")]
    JetStream {
        /// The operation.
        operation: &'static str,
        /// The error.
        reason: String,
    },
}

/// The durable pull consumer a party's node folds its projections from: on the party's view
/// stream (already filtered by the agreement, server-side), acknowledged cumulatively, and
/// delivering from view sequence `start`. An existing durable standing exactly there (all
/// before `start` acknowledged, nothing in flight) is kept; one left elsewhere by a crash or a
/// rebuild is replaced, since the node's committed checkpoint, not the broker's, says what is
/// folded. The server's copy of the config is read back and compared with what was asked.
pub async fn party_consumer(
    client: &async_nats::Client,
    party: &hru_domain::PartyId,
    name: &str,
    start: u64,
) -> Result<consumer::PullConsumer, LogError> {
    let js = jetstream::new(client.clone());
    let stream = js
        .get_stream(hru_policy::view_stream(party))
        .await
        .map_err(|e| js_err("view stream")(e.into()))?;
    let durable = format!("{party}-{name}");
    let asked = consumer::pull::Config {
        durable_name: Some(durable.clone()),
        ack_policy: consumer::AckPolicy::All,
        deliver_policy: consumer::DeliverPolicy::ByStartSequence {
            start_sequence: start.max(1),
        },
        replay_policy: consumer::ReplayPolicy::Instant,
        max_ack_pending: 10_000,
        ..Default::default()
    };
    if let Ok(mut existing) = stream.get_consumer::<consumer::pull::Config>(&durable).await {
        let info = existing
            .info()
            .await
            .map_err(|e| js_err("consumer info")(e.into()))?
            .clone();
        if info.ack_floor.stream_sequence + 1 == start.max(1) && info.num_ack_pending == 0 {
            check_consumer(&asked, &info.config, false)?;
            return Ok(existing);
        }
        stream
            .delete_consumer(&durable)
            .await
            .map_err(|e| js_err("replace durable consumer")(e.into()))?;
    }
    let mut created: consumer::PullConsumer = stream
        .create_consumer(asked.clone())
        .await
        .map_err(|e| js_err("create durable consumer")(e.into()))?;
    let got = created
        .info()
        .await
        .map_err(|e| js_err("consumer info")(e.into()))?
        .config
        .clone();
    check_consumer(&asked, &got, true)?;
    Ok(created)
}

/// Refuse a consumer whose server-side config differs from what was asked (a server that
/// silently drops a field it does not know would otherwise widen what a party reads).
fn check_consumer(asked: &consumer::pull::Config, got: &consumer::Config, deliver: bool) -> Result<(), LogError> {
    let sorted = |v: &[String]| {
        let mut v = v.to_vec();
        v.sort();
        v
    };
    let fields = [
        (
            "durable_name",
            format!("{:?}", asked.durable_name),
            format!("{:?}", got.durable_name),
        ),
        (
            "filter_subject",
            asked.filter_subject.clone(),
            got.filter_subject.clone(),
        ),
        (
            "filter_subjects",
            format!("{:?}", sorted(&asked.filter_subjects)),
            format!("{:?}", sorted(&got.filter_subjects)),
        ),
        (
            "ack_policy",
            format!("{:?}", asked.ack_policy),
            format!("{:?}", got.ack_policy),
        ),
        (
            "deliver_policy",
            format!("{:?}", asked.deliver_policy),
            format!("{:?}", got.deliver_policy),
        ),
    ];
    match fields
        .into_iter()
        .filter(|(field, ..)| deliver || *field != "deliver_policy")
        .find(|(_, a, g)| a != g)
    {
        Some((field, a, g)) => Err(LogError::JetStream {
            operation: "check consumer",
            reason: format!("{field}: asked {a}, server has {g}"),
        }),
        None => Ok(()),
    }
}

/// Why an append did not land; each variant says what the caller should do.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Another writer appended to the case first: re-read the case and decide again.
    #[error("conflict on {case_subjects}: the case is at sequence {current}, not the one expected; re-read and retry")]
    Conflict {
        /// The case's subjects, `hru.evt.<case>.>`.
        case_subjects: String,
        /// The sequence of the case's last event now.
        current: u64,
    },
    /// The broker refused the message for good (permissions, size, no stream).
    #[error("the broker refused {subject}: {reason}")]
    Refused {
        /// Subject.
        subject: String,
        /// The broker's answer.
        reason: String,
    },
    /// No acknowledgement after every retry; the same bytes may be retried later (deduplicated).
    #[error("no acknowledgement for {subject} after {attempts} attempts: {reason}")]
    Unavailable {
        /// Subject.
        subject: String,
        /// Attempts made.
        attempts: u32,
        /// The last error.
        reason: String,
    },
}

/// What the case must look like for an append to land.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// No condition (key grants, control events, or a caller that does not care).
    Any,
    /// The case's last event is at this stream sequence (0: the case has no event yet).
    CaseAt(u64),
}

/// The broker's acknowledgement of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// Stream sequence of the event.
    pub sequence: u64,
    /// Whether the broker had it already (a retry of an acknowledged publish).
    pub duplicate: bool,
}

/// Header naming the subject filter of `Nats-Expected-Last-Subject-Sequence`.
const EXPECTED_SUBJECT_HEADER: &str = "Nats-Expected-Last-Subject-Sequence-Subject";
/// Attempts of an ambiguous publish (timeout, lost connection) before giving up.
const PUBLISH_ATTEMPTS: u32 = 8;

/// The last sequence a `wrong last sequence: N` refusal states, from the error or its sources.
fn stated_last_sequence(e: &(dyn std::error::Error + 'static)) -> Option<u64> {
    const STATED: &str = "wrong last sequence: ";
    let mut next = Some(e);
    while let Some(error) = next {
        let text = error.to_string();
        if let Some(at) = text.rfind(STATED) {
            let digits: String = text[at + STATED.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            if let Ok(seq) = digits.parse() {
                return Some(seq);
            }
        }
        next = error.source();
    }
    None
}

fn js_err(operation: &'static str) -> impl FnOnce(Box<dyn std::error::Error + Send + Sync>) -> LogError {
    move |e| LogError::JetStream {
        operation,
        reason: e.to_string(),
    }
}

/// One message of the log as stored.
#[derive(Debug, Clone)]
pub struct LogEntry {
    /// Stream sequence.
    pub sequence: u64,
    /// Subject it was published under.
    pub subject: String,
    /// The envelope bytes.
    pub payload: Bytes,
}

/// Who connects to the broker: a party (or operator) with its NATS user nkey seed. Replies
/// arrive under its own inbox prefix `_INBOX_<id>.`, the only subjects it may subscribe to.
#[derive(Clone)]
pub struct BrokerIdentity {
    /// Party or operator id.
    pub id: String,
    /// NATS user nkey seed (`SU…`).
    pub nkey_seed: String,
}

impl BrokerIdentity {
    /// The broker identity of a party (or operator) whose secrets these are.
    pub fn of(secrets: &hru_envelope::PartySecrets) -> Self {
        Self {
            id: secrets.party.to_string(),
            nkey_seed: secrets.nats_seed.clone(),
        }
    }
}

impl std::fmt::Debug for BrokerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerIdentity")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Connect to NATS (as `identity`, when given) and refuse servers older than the floor.
pub async fn connect(url: &str, identity: Option<&BrokerIdentity>) -> Result<async_nats::Client, LogError> {
    let mut options = async_nats::ConnectOptions::new().connection_timeout(Duration::from_secs(5));
    if let Some(id) = identity {
        options = options
            .nkey(id.nkey_seed.clone())
            .custom_inbox_prefix(format!("_INBOX_{}", id.id));
    }
    let connect_error = |reason: String| LogError::Connect {
        url: url.to_owned(),
        reason,
    };
    let addrs = url
        .split(',')
        .map(|u| u.trim().parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| connect_error(e.to_string()))?;
    let client = options.connect(addrs).await.map_err(|e| connect_error(e.to_string()))?;
    let version = client.server_info().version;
    match major_minor(&version) {
        Some(v) if v >= MIN_SERVER => Ok(client),
        _ => Err(LogError::ServerTooOld { found: version }),
    }
}

/// Create or update the shared stream and every party's view stream of `isa` (the
/// provisioner's job; needs full rights in the account).
pub async fn provision(
    client: &async_nats::Client,
    isa: &hru_policy::CompiledIsa,
    replicas: usize,
) -> Result<(), LogError> {
    let js = jetstream::new(client.clone());
    match js.get_stream(EVENTS_STREAM).await {
        Ok(mut s) => {
            let info = s.info().await.map_err(|e| js_err("stream info")(e.into()))?;
            check_events_config(&info.config, replicas)?;
        }
        Err(_) => {
            js.create_stream(events_config(replicas))
                .await
                .map_err(|e| js_err("create stream HRU_EVENTS")(e.into()))?;
        }
    }
    let positions = positions_config(isa, replicas);
    match js.get_stream(POSITIONS_STREAM).await {
        Ok(_) => js.update_stream(positions).await.map(|_| ()),
        Err(_) => js.create_stream(positions).await.map(|_| ()),
    }
    .map_err(|e| LogError::JetStream {
        operation: "provision HRU_POSITIONS",
        reason: e.to_string(),
    })?;
    for party in isa.parties.keys() {
        let config = view_config(isa, party, replicas);
        let name = config.name.clone();
        let result = match js.get_stream(&name).await {
            Ok(_) => js.update_stream(config).await.map(|_| ()).map_err(|e| e.to_string()),
            Err(_) => js.create_stream(config).await.map(|_| ()).map_err(|e| e.to_string()),
        };
        result.map_err(|reason| LogError::JetStream {
            operation: "provision view stream",
            reason: format!("{name}: {reason}"),
        })?;
    }
    Ok(())
}

/// The view stream of one party: the subjects of `HRU_EVENTS` it is entitled to, sourced by
/// the server.
pub fn view_config(isa: &hru_policy::CompiledIsa, party: &hru_domain::PartyId, replicas: usize) -> stream::Config {
    let transforms = isa
        .view_subjects(party)
        .into_iter()
        .map(|s| stream::SubjectTransform {
            source: s,
            destination: String::new(),
        })
        .collect();
    stream::Config {
        name: hru_policy::view_stream(party),
        storage: stream::StorageType::File,
        num_replicas: replicas,
        deny_delete: true,
        deny_purge: true,
        allow_direct: true,
        sources: Some(vec![stream::Source {
            name: EVENTS_STREAM.to_owned(),
            subject_transforms: transforms,
            ..Default::default()
        }]),
        ..Default::default()
    }
}

/// A connection to the event log. Appends go to `HRU_EVENTS`; reads come from `HRU_EVENTS`
/// itself (operators) or from a party's view stream, whose copies are reported under the
/// `HRU_EVENTS` sequence they were sourced from, so sequences mean the same to every reader.
#[derive(Clone)]
pub struct EventLog {
    js: jetstream::Context,
    /// The stream reads come from.
    stream: stream::Stream,
    /// Whether `stream` is a party's view (sequences come from its source header).
    view: bool,
}

/// Header a sourcing stream stamps on each copy: `<source stream> <source sequence> …`.
const SOURCE_HEADER: &str = "Nats-Stream-Source";

/// The `HRU_EVENTS` sequence a view's copy was sourced from.
pub fn source_sequence(headers: Option<&async_nats::HeaderMap>) -> Option<u64> {
    let value = headers?.get(SOURCE_HEADER)?.as_str();
    let mut fields = value.split_whitespace();
    let stream = fields.next()?;
    let from_events = stream
        .strip_prefix(EVENTS_STREAM)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(':'));
    if !from_events {
        return None;
    }
    fields.next()?.parse().ok()
}

fn unsourced(operation: &'static str, view_sequence: u64) -> LogError {
    LogError::JetStream {
        operation,
        reason: format!("view message {view_sequence} has no {SOURCE_HEADER} header naming {EVENTS_STREAM}"),
    }
}

/// Parse `major.minor` out of a server version such as `2.15.1` or `v2.11.0-beta`.
fn major_minor(version: &str) -> Option<(u64, u64)> {
    let mut parts = version.trim_start_matches('v').split(['.', '-']);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// The stream configuration the event log requires.
fn events_config(replicas: usize) -> stream::Config {
    stream::Config {
        name: EVENTS_STREAM.to_owned(),
        subjects: EVENT_SUBJECTS.iter().map(|s| (*s).to_owned()).collect(),
        storage: stream::StorageType::File,
        num_replicas: replicas,
        duplicate_window: MIN_DUPLICATE_WINDOW,
        deny_delete: true,
        deny_purge: true,
        allow_direct: false,
        allow_atomic_publish: true,
        ..Default::default()
    }
}

/// The position stream: kept for the agreement's retention of position batches.
pub fn positions_config(isa: &hru_policy::CompiledIsa, replicas: usize) -> stream::Config {
    let days = isa.retention_of(hru_domain::EventType::PositionBatch).max_days();
    stream::Config {
        name: POSITIONS_STREAM.to_owned(),
        subjects: POSITION_SUBJECTS.iter().map(|s| (*s).to_owned()).collect(),
        storage: stream::StorageType::File,
        num_replicas: replicas,
        duplicate_window: MIN_DUPLICATE_WINDOW,
        max_age: Duration::from_secs(days * 86_400),
        deny_delete: true,
        deny_purge: true,
        ..Default::default()
    }
}

/// Refuse an existing stream whose configuration would weaken the log.
fn check_events_config(found: &stream::Config, replicas: usize) -> Result<(), LogError> {
    let unsafe_field = |field, found: String, required: String| {
        Err(LogError::UnsafeStream {
            stream: EVENTS_STREAM,
            field,
            found,
            required,
        })
    };
    if !found.deny_delete {
        return unsafe_field("deny_delete", "false".into(), "true".into());
    }
    if found.num_replicas.max(1) < replicas {
        return unsafe_field(
            "num_replicas",
            found.num_replicas.to_string(),
            format!("at least {replicas}"),
        );
    }
    if !found.deny_purge {
        return unsafe_field("deny_purge", "false".into(), "true".into());
    }
    if found.storage != stream::StorageType::File {
        return unsafe_field("storage", format!("{:?}", found.storage), "File".into());
    }
    if found.duplicate_window < MIN_DUPLICATE_WINDOW {
        return unsafe_field(
            "duplicate_window",
            format!("{:?}", found.duplicate_window),
            "at least 2 min".into(),
        );
    }
    let mut subjects = found.subjects.clone();
    subjects.sort();
    let mut want: Vec<String> = EVENT_SUBJECTS.iter().map(|s| (*s).to_owned()).collect();
    want.sort();
    if subjects != want {
        return unsafe_field("subjects", format!("{subjects:?}"), format!("{want:?}"));
    }
    Ok(())
}

impl EventLog {
    /// Connect, check the server floor, and create (or check) the `HRU_EVENTS` stream.
    pub async fn connect(url: &str) -> Result<Self, LogError> {
        Self::open(url, None, 1).await
    }

    /// Connect (as `identity`, when given; `url` may list several servers, comma-separated),
    /// check the server floor, and create `HRU_EVENTS` with `replicas` or check the existing
    /// stream is at least as safe.
    pub async fn open(url: &str, identity: Option<&BrokerIdentity>, replicas: usize) -> Result<Self, LogError> {
        let client = connect(url, identity).await?;
        let js = jetstream::new(client);
        let stream = match js.get_stream(EVENTS_STREAM).await {
            Ok(mut s) => {
                let info = s.info().await.map_err(|e| js_err("stream info")(e.into()))?;
                check_events_config(&info.config, replicas)?;
                s
            }
            Err(_) => js
                .create_stream(events_config(replicas))
                .await
                .map_err(|e| js_err("create stream HRU_EVENTS")(e.into()))?,
        };
        Ok(Self {
            js,
            stream,
            view: false,
        })
    }

    /// Connect as `identity` to append as `party` and read only its view stream `HRU_VIEW_<party>`
    /// (what the generated broker permissions allow a party). The view must have been provisioned.
    pub async fn open_view(
        url: &str,
        identity: Option<&BrokerIdentity>,
        party: &hru_domain::PartyId,
    ) -> Result<Self, LogError> {
        let client = connect(url, identity).await?;
        let js = jetstream::new(client);
        let name = hru_policy::view_stream(party);
        let stream = js.get_stream(&name).await.map_err(|e| LogError::JetStream {
            operation: "open view stream",
            reason: format!("{name}: {e}; the provisioner creates it (`hru log provision`)"),
        })?;
        Ok(Self { js, stream, view: true })
    }

    /// The client this log talks through.
    pub fn client(&self) -> async_nats::Client {
        self.js.client()
    }

    /// The `HRU_EVENTS` sequence of a stored message of the read stream.
    fn sequence_of(&self, stored: u64, headers: Option<&async_nats::HeaderMap>) -> Result<u64, LogError> {
        if !self.view {
            return Ok(stored);
        }
        source_sequence(headers).ok_or_else(|| unsourced("read view", stored))
    }

    /// The read stream's state (messages, first and last stored sequence).
    async fn state(&self) -> Result<stream::State, LogError> {
        let mut stream = self.stream.clone();
        Ok(stream
            .info()
            .await
            .map_err(|e| js_err("stream info")(e.into()))?
            .state
            .clone())
    }

    /// The `HRU_EVENTS` sequence of the view's copy stored at `stored`.
    async fn source_at(&self, stored: u64) -> Result<u64, LogError> {
        let message = self
            .stream
            .get_raw_message(stored)
            .await
            .map_err(|e| js_err("read view message")(e.into()))?;
        source_sequence(Some(&message.headers)).ok_or_else(|| unsourced("read view", stored))
    }

    /// The first sequence of the read stream holding `HRU_EVENTS` sequence `from` or later (one
    /// past the end when none does). Views keep their source's order, so this is a binary search.
    pub async fn read_position(&self, from: u64) -> Result<u64, LogError> {
        if !self.view {
            return Ok(from.max(1));
        }
        let state = self.state().await?;
        if state.messages == 0 {
            return Ok(state.last_sequence + 1);
        }
        let (mut lo, mut hi) = (state.first_sequence, state.last_sequence + 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.source_at(mid).await? >= from {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        Ok(lo)
    }

    /// Append one sealed envelope with `Nats-Msg-Id` = its event id; returns its stream sequence.
    pub async fn append(&self, sealed: &SealedEnvelope) -> Result<u64, LogError> {
        self.append_expecting(sealed, Expect::Any)
            .await
            .map(|a| a.sequence)
            .map_err(|e| LogError::JetStream {
                operation: "append",
                reason: e.to_string(),
            })
    }

    /// Append one envelope, optionally only if its case is at `expect`. An ambiguous publish is
    /// retried with the same bytes and id, so the broker stores it once.
    pub async fn append_expecting(&self, sealed: &SealedEnvelope, expect: Expect) -> Result<Ack, AppendError> {
        let case_subjects = sealed.header.case_id.map(|c| format!("hru.evt.{}.>", c.token()));
        let mut publish = jetstream::message::PublishMessage::build()
            .payload(Bytes::copy_from_slice(&sealed.bytes))
            .message_id(sealed.header.event_id.to_string());
        if let (Expect::CaseAt(seq), Some(filter)) = (expect, &case_subjects) {
            publish = publish
                .expected_last_subject_sequence(seq)
                .header(EXPECTED_SUBJECT_HEADER, filter.as_str());
        }
        let mut last_error = String::new();
        for attempt in 1..=PUBLISH_ATTEMPTS {
            let sent = self.js.send_publish(sealed.subject.clone(), publish.clone()).await;
            let acked = match sent {
                Ok(future) => future.await,
                Err(e) => Err(e),
            };
            match acked {
                Ok(ack) => {
                    return Ok(Ack {
                        sequence: ack.sequence,
                        duplicate: ack.duplicate,
                    });
                }
                Err(e) => {
                    use async_nats::jetstream::context::PublishErrorKind as K;
                    match e.kind() {
                        K::WrongLastSequence => {
                            // The server checks the expectation before deduplicating, so a
                            // retry of an event it already holds lands here: find it first.
                            let id = sealed.header.event_id.to_string();
                            if let Ok(Some(sequence)) = self.find_message_id(&sealed.subject, &id).await {
                                return Ok(Ack {
                                    sequence,
                                    duplicate: true,
                                });
                            }
                            let filter = case_subjects.clone().unwrap_or_default();
                            // The server states the case's true last sequence; a view may not hold
                            // every event of the case, so its own last copy can be older.
                            let current = match stated_last_sequence(&e) {
                                Some(seq) => seq,
                                None => self.last_sequence_of(&filter).await.unwrap_or(0),
                            };
                            return Err(AppendError::Conflict {
                                case_subjects: filter,
                                current,
                            });
                        }
                        // "No responders" (reported as no stream) also happens while a clustered stream
                        // elects a leader: the stream was checked at open, so it is retried.
                        K::MaxPayloadExceeded | K::WrongLastMessageId => {
                            return Err(AppendError::Refused {
                                subject: sealed.subject.clone(),
                                reason: e.to_string(),
                            });
                        }
                        K::Other if e.to_string().contains("err_code") && !e.to_string().contains("unavailable") => {
                            return Err(AppendError::Refused {
                                subject: sealed.subject.clone(),
                                reason: e.to_string(),
                            });
                        }
                        _ => {
                            last_error = e.to_string();
                            tracing::warn!(attempt, subject = %sealed.subject, cause = %e, "ambiguous publish; retrying the same bytes");
                            tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
                        }
                    }
                }
            }
        }
        Err(AppendError::Unavailable {
            subject: sealed.subject.clone(),
            attempts: PUBLISH_ATTEMPTS,
            reason: last_error,
        })
    }

    /// Publish envelopes without waiting between them (no case condition) and await their
    /// acknowledgements in order; stops at the first failure. Returns the acknowledgements of
    /// the prefix that landed and the failure, if any.
    pub async fn append_pipelined(&self, envelopes: &[&SealedEnvelope]) -> (Vec<Ack>, Option<AppendError>) {
        let mut pending = Vec::with_capacity(envelopes.len());
        for env in envelopes {
            let publish = jetstream::message::PublishMessage::build()
                .payload(Bytes::copy_from_slice(&env.bytes))
                .message_id(env.header.event_id.to_string());
            match self.js.send_publish(env.subject.clone(), publish).await {
                Ok(future) => pending.push(future),
                Err(e) => {
                    let error = AppendError::Unavailable {
                        subject: env.subject.clone(),
                        attempts: 1,
                        reason: e.to_string(),
                    };
                    return (Vec::new(), Some(error));
                }
            }
        }
        let mut acks = Vec::with_capacity(envelopes.len());
        for (env, future) in envelopes.iter().zip(pending) {
            match future.await {
                Ok(ack) => acks.push(Ack {
                    sequence: ack.sequence,
                    duplicate: ack.duplicate,
                }),
                Err(e) => {
                    let error = AppendError::Unavailable {
                        subject: env.subject.clone(),
                        attempts: 1,
                        reason: e.to_string(),
                    };
                    return (acks, Some(error));
                }
            }
        }
        (acks, None)
    }

    /// Whether the stream takes atomic batches (nats-server 2.12+ with `allow_atomic`): then a
    /// whole batch is stored, and synced, as one.
    pub async fn atomic_batches(&self) -> bool {
        let version = self.js.client().server_info().version;
        if major_minor(&version).is_none_or(|v| v < (2, 12)) {
            return false;
        }
        let mut stream = self.stream.clone();
        stream
            .info()
            .await
            .map(|i| i.config.allow_atomic_publish)
            .unwrap_or(false)
    }

    /// Publish envelopes as one atomic batch: all are stored or none, under one
    /// acknowledgement. Returns their stream sequences.
    pub async fn append_atomic(&self, envelopes: &[&SealedEnvelope]) -> Result<Vec<u64>, AppendError> {
        let Some(last) = envelopes.last() else {
            return Ok(Vec::new());
        };
        let client = self.js.client();
        let batch_id = format!("b{}", last.header.event_id.0.simple());
        let reason = |e: &dyn std::fmt::Display| AppendError::Unavailable {
            subject: last.subject.clone(),
            attempts: 1,
            reason: e.to_string(),
        };
        for (i, env) in envelopes.iter().enumerate() {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(
                async_nats::header::NATS_MESSAGE_ID,
                env.header.event_id.to_string().as_str(),
            );
            headers.insert(async_nats::header::NATS_BATCH_ID, batch_id.as_str());
            headers.insert(async_nats::header::NATS_BATCH_SEQUENCE, (i + 1).to_string().as_str());
            let payload = Bytes::copy_from_slice(&env.bytes);
            if i + 1 < envelopes.len() {
                client
                    .publish_with_headers(env.subject.clone(), headers, payload)
                    .await
                    .map_err(|e| reason(&e))?;
            } else {
                headers.insert(async_nats::header::NATS_BATCH_COMMIT, "1");
                let reply = tokio::time::timeout(
                    Duration::from_secs(10),
                    client.request_with_headers(env.subject.clone(), headers, payload),
                )
                .await
                .map_err(|e| reason(&e))?
                .map_err(|e| reason(&e))?;
                let ack: serde_json::Value = serde_json::from_slice(&reply.payload).map_err(|e| reason(&e))?;
                if let Some(error) = ack.get("error") {
                    return Err(AppendError::Refused {
                        subject: env.subject.clone(),
                        reason: error.to_string(),
                    });
                }
                let seq = ack
                    .get("seq")
                    .and_then(serde_json::Value::as_u64)
                    .ok_or_else(|| reason(&"acknowledgement without seq"))?;
                let n = envelopes.len() as u64;
                return Ok((seq + 1 - n..=seq).collect());
            }
        }
        Ok(Vec::new())
    }

    /// Append a prepared batch in order (grants unconditionally, the case event under `expect`),
    /// committing each acknowledged envelope to `sealer`: whatever fails, the producer's chain
    /// stands exactly after the last envelope the log holds.
    pub async fn append_batch(
        &self,
        sealer: &mut hru_envelope::Sealer,
        batch: &hru_envelope::SealedBatch,
        expect: Expect,
    ) -> Result<Vec<Ack>, AppendError> {
        let mut acks = Vec::with_capacity(batch.envelopes.len());
        for (i, envelope) in batch.envelopes.iter().enumerate() {
            let condition = if envelope.header.case_id.is_some() {
                expect
            } else {
                Expect::Any
            };
            acks.push(self.append_expecting(envelope, condition).await?);
            sealer.commit(batch, i + 1);
        }
        Ok(acks)
    }

    /// The stream sequence of the message with `Nats-Msg-Id` = `id` on exactly `subject`, if the
    /// log holds it (reads headers only).
    pub async fn find_message_id(&self, subject: &str, id: &str) -> Result<Option<u64>, LogError> {
        let config = consumer::pull::OrderedConfig {
            filter_subject: subject.to_owned(),
            headers_only: true,
            ..Default::default()
        };
        let mut consumer = self
            .stream
            .create_consumer(config)
            .await
            .map_err(|e| js_err("create ordered consumer")(e.into()))?;
        let info = consumer
            .info()
            .await
            .map_err(|e| js_err("consumer info")(e.into()))?
            .clone();
        let mut found = None;
        if info.num_pending > 0 {
            let mut messages = consumer.messages().await.map_err(|e| js_err("consume")(e.into()))?;
            for _ in 0..info.num_pending {
                let Some(message) = messages.next().await else { break };
                let message = message.map_err(|e| js_err("consume")(e.into()))?;
                let same = message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
                    .map(|v| v.as_str() == id);
                if same == Some(true) {
                    let stored = message
                        .info()
                        .map_err(|e| js_err("message info")(e.to_string().into()))?
                        .stream_sequence;
                    found = Some(self.sequence_of(stored, message.headers.as_ref())?);
                    break;
                }
            }
        }
        self.forget_consumer(&info.name).await;
        Ok(found)
    }

    /// Delete a reader's consumer once done (the server would expire it, but only later).
    async fn forget_consumer(&self, name: &str) {
        if let Err(e) = self.stream.delete_consumer(name).await {
            tracing::debug!(consumer = name, cause = %e, "consumer already gone");
        }
    }

    /// The first and last sequence the log still holds for this reader (retention may have
    /// removed older).
    pub async fn bounds(&self) -> Result<(u64, u64), LogError> {
        let state = self.state().await?;
        if !self.view || state.messages == 0 {
            return Ok((state.first_sequence, state.last_sequence));
        }
        Ok((
            self.source_at(state.first_sequence).await?,
            self.source_at(state.last_sequence).await?,
        ))
    }

    /// The last sequence the log holds for this reader (0 when it holds nothing).
    pub async fn last_sequence(&self) -> Result<u64, LogError> {
        let state = self.state().await?;
        if !self.view || state.messages == 0 {
            return Ok(state.last_sequence);
        }
        self.source_at(state.last_sequence).await
    }

    /// The stream sequence of the last message on subjects matching `filter` (0 when none).
    pub async fn last_sequence_of(&self, filter: &str) -> Result<u64, LogError> {
        match self.stream.get_last_raw_message_by_subject(filter).await {
            Ok(m) => self.sequence_of(m.sequence, Some(&m.headers)),
            Err(e) if e.kind() == async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound => Ok(0),
            Err(e) => Err(js_err("last message by subject")(e.into())),
        }
    }

    /// The sequence of a case's last event (0 when the case has none): what an append expects.
    pub async fn case_version(&self, case: hru_domain::CaseId) -> Result<u64, LogError> {
        self.last_sequence_of(&format!("hru.evt.{}.>", case.token())).await
    }

    /// Every message from stream sequence `from` (1 = the start) on subjects matching any of
    /// `filters` (all when empty), in order, up to the end of the log as it was when called.
    pub async fn replay(&self, from: u64, filters: &[String]) -> Result<Vec<LogEntry>, LogError> {
        let start_sequence = if self.view && from > 1 {
            self.read_position(from).await?
        } else {
            from.max(1)
        };
        self.replay_with(consumer::DeliverPolicy::ByStartSequence { start_sequence }, filters)
            .await
    }

    /// Every message stored at or after `since_ms` (Unix ms, the broker's clock) on subjects
    /// matching any of `filters`, in order, up to the end of the log as it was when called.
    pub async fn replay_since(&self, since_ms: i64, filters: &[String]) -> Result<Vec<LogEntry>, LogError> {
        let start_time =
            time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(since_ms) * 1_000_000).map_err(|e| {
                LogError::JetStream {
                    operation: "replay since",
                    reason: e.to_string(),
                }
            })?;
        self.replay_with(consumer::DeliverPolicy::ByStartTime { start_time }, filters)
            .await
    }

    async fn replay_with(
        &self,
        deliver_policy: consumer::DeliverPolicy,
        filters: &[String],
    ) -> Result<Vec<LogEntry>, LogError> {
        read_stream(&self.stream, deliver_policy, filters, self.view).await
    }
}

/// Every message of `stream` from `deliver_policy` on, on subjects matching any of `filters`
/// (all when empty), in order, up to the end as it was when called; a view's messages under
/// their source sequence when `view`.
async fn read_stream(
    stream: &stream::Stream,
    deliver_policy: consumer::DeliverPolicy,
    filters: &[String],
    view: bool,
) -> Result<Vec<LogEntry>, LogError> {
    {
        let config = consumer::pull::OrderedConfig {
            filter_subjects: filters.to_vec(),
            deliver_policy,
            ..Default::default()
        };
        let mut consumer = stream
            .create_consumer(config)
            .await
            .map_err(|e| js_err("create ordered consumer")(e.into()))?;
        let info = consumer.info().await.map_err(|e| js_err("consumer info")(e.into()))?;
        if info.config.filter_subjects.len() != filters.len() {
            return Err(LogError::JetStream {
                operation: "create ordered consumer",
                reason: format!(
                    "the server kept filters {:?} of {filters:?}",
                    info.config.filter_subjects
                ),
            });
        }
        let pending = info.num_pending as usize;
        let mut out = Vec::with_capacity(pending);
        if pending == 0 {
            return Ok(out);
        }
        let mut messages = consumer.messages().await.map_err(|e| js_err("consume")(e.into()))?;
        while out.len() < pending {
            let Some(message) = messages.next().await else {
                break;
            };
            let message = message.map_err(|e| js_err("consume")(e.into()))?;
            let stored = message
                .info()
                .map_err(|e| js_err("message info")(e.to_string().into()))?
                .stream_sequence;
            let sequence = if view {
                source_sequence(message.headers.as_ref()).ok_or_else(|| unsourced("read view", stored))?
            } else {
                stored
            };
            out.push(LogEntry {
                sequence,
                subject: message.subject.to_string(),
                payload: message.payload.clone(),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_floor() {
        assert_eq!(major_minor("2.15.1"), Some((2, 15)));
        assert_eq!(major_minor("v2.11.0-beta.1"), Some((2, 11)));
        assert!(major_minor("2.9.25").is_some_and(|v| v < MIN_SERVER));
        assert_eq!(major_minor("garbage"), None);
    }

    #[test]
    fn unsafe_stream_configs_are_named() {
        assert!(check_events_config(&events_config(1), 1).is_ok());
        assert!(matches!(
            check_events_config(&events_config(1), 3),
            Err(LogError::UnsafeStream {
                field: "num_replicas",
                ..
            })
        ));
        let mut c = events_config(1);
        c.deny_delete = false;
        assert!(matches!(
            check_events_config(&c, 1),
            Err(LogError::UnsafeStream {
                field: "deny_delete",
                ..
            })
        ));
        let mut c = events_config(1);
        c.subjects.pop();
        assert!(matches!(
            check_events_config(&c, 1),
            Err(LogError::UnsafeStream { field: "subjects", .. })
        ));
    }
}
