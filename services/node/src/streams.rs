//! `SubscriptionService` and `BreachService`: live streams of what the caller may see, read from
//! the log behind the node's fold (so every grant they need is in the key ring), resumable.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use futures::{StreamExt as _, TryStreamExt as _};
use hru_broker::Filter;
use hru_domain::{CaseId, EventType, PartyId, split_draft};
use hru_envelope::AudiencePolicy as _;
use hru_log::{Expect, SharedLog as _};
use hru_wire::v1 as pb;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use crate::Shared;
use crate::access::{Disclosed, opened_for};
use crate::case_service::case_id;
use crate::decide;

type Streamed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn stream_of<T: Send + 'static>(rx: mpsc::Receiver<Result<T, Status>>) -> Streamed<T> {
    Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

/// Reads folded log entries on some subjects, batch by batch, from a position on.
struct Follower {
    next: u64,
    filters: Vec<Filter>,
}

/// Most entries one poll of a stream reads: a stream far behind catches up page by page.
const FOLLOW_PAGE: usize = 512;

impl Follower {
    /// The next envelopes the fold has passed that the read path accepts (empty when there
    /// are none yet).
    async fn next_batch(&mut self, shared: &Shared) -> Vec<(u64, hru_envelope::VerifiedEnvelope)> {
        let head = shared.folded_through();
        if head < self.next {
            return Vec::new();
        }
        let page = match shared.log.reader().replay(self.next, &self.filters).await {
            Ok(entries) => {
                entries
                    .try_take_while(|e| std::future::ready(Ok(e.sequence <= head)))
                    .take(FOLLOW_PAGE)
                    .try_collect::<Vec<_>>()
                    .await
            }
            Err(e) => Err(e),
        };
        match page {
            Ok(page) => {
                self.next = match page.last() {
                    Some(last) if page.len() == FOLLOW_PAGE => last.sequence + 1,
                    _ => head + 1,
                };
                shared.checked(&page)
            }
            Err(e) => {
                tracing::warn!(cause = %e, "reading the log for a stream failed; retrying");
                Vec::new()
            }
        }
    }
}

/// One open stream of a calling party, counted against its limit until dropped.
pub(crate) struct StreamSlot {
    streams: Arc<std::sync::Mutex<std::collections::HashMap<PartyId, usize>>>,
    party: PartyId,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.streams.lock()
            && let Some(n) = open.get_mut(&self.party)
        {
            *n = n.saturating_sub(1);
        }
    }
}

impl Shared {
    /// A stream slot for `party`, or RESOURCE_EXHAUSTED naming the limit.
    pub(crate) fn stream_slot(&self, party: &PartyId) -> Result<StreamSlot, Status> {
        let mut open = self
            .streams
            .lock()
            .map_err(|_| Status::internal("stream table unavailable"))?;
        let n = open.entry(party.clone()).or_default();
        if *n >= self.max_streams_per_party {
            return Err(Status::resource_exhausted(format!(
                "{party} already holds {n} open streams on this node, the most it may (key `max_streams_per_party`); \
                 close one first"
            )));
        }
        *n += 1;
        Ok(StreamSlot {
            streams: self.streams.clone(),
            party: party.clone(),
        })
    }
}

/// A stream's access records (DPA 2018 s62: who received a case's events, by stream too): one
/// per page of events about to be sent, naming every case in it, written before the page leaves.
struct StreamAccess {
    grant: hru_policy::CallGrant,
    person: String,
    sections: Vec<String>,
}

impl StreamAccess {
    /// Record that `cases` are about to be sent; false when the record cannot be written (the
    /// page must not be sent, and the stream ends).
    async fn before_sending(&self, shared: &Shared, cases: std::collections::BTreeSet<CaseId>) -> bool {
        if cases.is_empty() {
            return true;
        }
        let what = Disclosed {
            case: None,
            case_ids: cases.into_iter().collect(),
            sections: self.sections.clone(),
            disclosed_to: None,
        };
        match shared.log_access(&self.grant, &self.person, what).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(cause = %e.message(), "a stream's access record was not written; the stream ends");
                false
            }
        }
    }
}

/// Wait a little before polling again; false once the client has gone or the node is stopping.
async fn pause<T>(tx: &mpsc::Sender<T>, shared: &Shared) -> bool {
    let mut stopping = shared.stopping.clone();
    if *stopping.borrow() {
        return false;
    }
    tokio::select! {
        () = tx.closed() => false,
        _ = stopping.changed() => false,
        () = tokio::time::sleep(Duration::from_millis(50)) => true,
    }
}

/// Longest action an acknowledgement may record, characters.
pub(crate) const MAX_ACTION_CHARS: usize = 1_000;

/// How often a command decided on a case is decided again after another writer moved the case.
const DECIDE_ATTEMPTS: usize = 5;

/// The `SubscriptionService` implementation.
pub struct SubscriptionApi {
    shared: Arc<Shared>,
}

impl SubscriptionApi {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

#[tonic::async_trait]
impl pb::subscription_service_server::SubscriptionService for SubscriptionApi {
    type SubscribeStream = Streamed<pb::SubscribeResponse>;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        self.shared
            .timed("SubscriptionService/Subscribe", self.inner(request))
            .await
    }
}

impl SubscriptionApi {
    async fn inner(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Streamed<pb::SubscribeResponse>>, Status> {
        let purpose = request.get_ref().purpose.clone();
        let (caller, grant) = self
            .shared
            .permit(&request, "SubscriptionService/Subscribe", &purpose)?;
        let pb::SubscribeRequest {
            case_id: case_bytes,
            event_types,
            from_sequence,
            purpose: _,
        } = request.into_inner();
        let case = if case_bytes.is_empty() {
            None
        } else {
            Some(case_id(&case_bytes)?)
        };
        let types = event_types
            .iter()
            .enumerate()
            .map(|(i, t)| {
                t.parse::<EventType>().ok().filter(|t| t.has_case()).ok_or_else(|| {
                    Status::invalid_argument(format!("field `event_types[{i}]`: {t:?} is not a case event type"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let what = match case {
            Some(c) => Disclosed::case(c, event_types.clone()),
            None => Disclosed {
                case: None,
                case_ids: Vec::new(),
                sections: event_types.clone(),
                disclosed_to: None,
            },
        };
        let slot = self.shared.stream_slot(&caller.party)?;
        self.shared.log_access(&grant, &caller.person, what).await?;
        let filters = vec![case.map_or_else(Filter::all_case_events, Filter::case_events)];
        let (tx, rx) = mpsc::channel(256);
        let shared = self.shared.clone();
        let access = StreamAccess {
            grant,
            person: caller.person.clone(),
            sections: event_types,
        };
        tokio::spawn(async move {
            let _slot = slot;
            let mut follower = Follower {
                next: from_sequence + 1,
                filters,
            };
            loop {
                if *shared.stopping.borrow() {
                    return;
                }
                let batch = follower.next_batch(&shared).await;
                if batch.is_empty() && !pause(&tx, &shared).await {
                    return;
                }
                let page: Vec<(Option<CaseId>, pb::OpenedEvent)> = batch
                    .into_iter()
                    .filter(|(_, v)| types.is_empty() || types.contains(&v.header.event_type))
                    .filter_map(|(sequence, v)| {
                        let event = shared.visible(sequence, &v, &caller.party, None)?;
                        Some((v.header.case_id, event))
                    })
                    .collect();
                let cases = page.iter().filter_map(|(c, _)| *c).collect();
                if !access.before_sending(&shared, cases).await {
                    let _ = tx
                        .send(Err(Status::unavailable("the access log cannot be written")))
                        .await;
                    return;
                }
                for (_, event) in page {
                    if tx.send(Ok(pb::SubscribeResponse { event: Some(event) })).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(stream_of(rx)))
    }
}

/// An opaque resume token for a position in the log.
fn token(sequence: u64) -> String {
    format!("hru1.{sequence:x}")
}

fn parse_token(token: &str) -> Result<u64, Status> {
    token
        .strip_prefix("hru1.")
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .ok_or_else(|| Status::invalid_argument("field `resume_token` is not a token this service issued"))
}

/// The `BreachService` implementation.
pub struct BreachApi {
    shared: Arc<Shared>,
}

impl BreachApi {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

#[tonic::async_trait]
impl pb::breach_service_server::BreachService for BreachApi {
    type StreamBreachesStream = Streamed<pb::StreamBreachesResponse>;

    async fn stream_breaches(
        &self,
        request: Request<pb::StreamBreachesRequest>,
    ) -> Result<Response<Self::StreamBreachesStream>, Status> {
        self.shared
            .timed("BreachService/StreamBreaches", self.stream_inner(request))
            .await
    }

    async fn acknowledge(
        &self,
        request: Request<pb::AcknowledgeRequest>,
    ) -> Result<Response<pb::AcknowledgeResponse>, Status> {
        self.shared
            .timed("BreachService/Acknowledge", self.acknowledge_inner(request))
            .await
    }
}

impl BreachApi {
    async fn stream_inner(
        &self,
        request: Request<pb::StreamBreachesRequest>,
    ) -> Result<Response<Streamed<pb::StreamBreachesResponse>>, Status> {
        let purpose = request.get_ref().purpose.clone();
        let (caller, grant) = self.shared.permit(&request, "BreachService/StreamBreaches", &purpose)?;
        let resume = &request.get_ref().resume_token;
        let (first, _) = self
            .shared
            .log
            .reader()
            .bounds()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let after = if resume.is_empty() {
            first.saturating_sub(1)
        } else {
            let after = parse_token(resume)?;
            if after + 1 < first {
                return Err(Status::out_of_range(format!(
                    "field `resume_token`: the log no longer holds what followed it (retention starts at {first}); resume with an empty token"
                )));
            }
            after
        };
        let slot = self.shared.stream_slot(&caller.party)?;
        self.shared
            .log_access(
                &grant,
                &caller.person,
                Disclosed {
                    case: None,
                    case_ids: Vec::new(),
                    sections: vec!["core".into()],
                    disclosed_to: None,
                },
            )
            .await?;
        let (tx, rx) = mpsc::channel(256);
        let shared = self.shared.clone();
        let heartbeat = Duration::from_secs(self.shared.breach_heartbeat_s);
        let access = StreamAccess {
            grant,
            person: caller.person.clone(),
            sections: vec!["core".into()],
        };
        tokio::spawn(async move {
            let _slot = slot;
            let mut follower = Follower {
                next: after + 1,
                filters: vec![Filter::events_of_type(hru_domain::EventType::TagBreach)],
            };
            let mut last_sent = std::time::Instant::now();
            // The geofence's state: now, then whenever it changes (where this node watches it).
            let watching = shared.geofence.watching.load(std::sync::atomic::Ordering::Relaxed);
            let mut geofence = shared.geofence.status.subscribe();
            geofence.mark_changed();
            loop {
                if *shared.stopping.borrow() {
                    return;
                }
                if watching && geofence.has_changed().unwrap_or(false) {
                    let status = geofence.borrow_and_update().clone();
                    let message = pb::StreamBreachesResponse {
                        breach: None,
                        resume_token: token(follower.next - 1),
                        heartbeat: false,
                        geofence: Some(status),
                    };
                    if tx.send(Ok(message)).await.is_err() {
                        return;
                    }
                }
                let batch = follower.next_batch(&shared).await;
                if batch.is_empty() {
                    if last_sent.elapsed() >= heartbeat {
                        last_sent = std::time::Instant::now();
                        let beat = pb::StreamBreachesResponse {
                            breach: None,
                            resume_token: token(follower.next - 1),
                            heartbeat: true,
                            geofence: None,
                        };
                        if tx.send(Ok(beat)).await.is_err() {
                            return;
                        }
                    }
                    if !pause(&tx, &shared).await {
                        return;
                    }
                }
                let page: Vec<(Option<CaseId>, u64, pb::BreachCore)> = batch
                    .into_iter()
                    .filter_map(|(sequence, v)| {
                        let core = shared
                            .visible(sequence, &v, &caller.party, Some(&["core".to_owned()]))
                            .and_then(|e| e.sections.into_iter().find(|s| s.refusal.is_empty()))
                            .and_then(|s| prost::Message::decode(s.plaintext.as_slice()).ok())?;
                        Some((v.header.case_id, sequence, core))
                    })
                    .collect();
                let cases = page.iter().filter_map(|(c, ..)| *c).collect();
                if !access.before_sending(&shared, cases).await {
                    let _ = tx
                        .send(Err(Status::unavailable("the access log cannot be written")))
                        .await;
                    return;
                }
                for (_, sequence, core) in page {
                    last_sent = std::time::Instant::now();
                    let message = pb::StreamBreachesResponse {
                        breach: Some(core),
                        resume_token: token(sequence),
                        heartbeat: false,
                        geofence: None,
                    };
                    if tx.send(Ok(message)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(stream_of(rx)))
    }

    async fn acknowledge_inner(
        &self,
        request: Request<pb::AcknowledgeRequest>,
    ) -> Result<Response<pb::AcknowledgeResponse>, Status> {
        let purpose = request.get_ref().purpose.clone();
        let (caller, grant) = self.shared.permit(&request, "BreachService/Acknowledge", &purpose)?;
        let pb::AcknowledgeRequest {
            breach_id,
            operator,
            action,
            purpose: _,
        } = request.into_inner();
        let id = uuid::Uuid::from_slice(&breach_id)
            .map_err(|_| Status::invalid_argument("field `breach_id` must be 16 bytes"))?;
        if operator.trim().is_empty() {
            return Err(Status::invalid_argument("field `operator` is missing"));
        }
        if action.trim().is_empty() {
            return Err(Status::invalid_argument("field `action` is missing"));
        }
        self.shared.own_party_only(&caller)?;
        let decided = self
            .shared
            .acknowledge_breach(&grant, &caller, id, &operator, &action)
            .await?;
        Ok(Response::new(decided))
    }
}

impl Shared {
    /// Acknowledge breach `id` for `caller` under `grant`, naming `operator` and the `action`
    /// taken: the breach board names the case, the case's own events decide (once per
    /// episode), and the acknowledgement is appended under the case's version, so of two
    /// operators only one wins and the other is told who did.
    pub(crate) async fn acknowledge_breach(
        &self,
        grant: &hru_policy::CallGrant,
        caller: &crate::access::Caller,
        id: uuid::Uuid,
        operator: &str,
        action: &str,
    ) -> Result<pb::AcknowledgeResponse, Status> {
        let chars = action.chars().count();
        if chars > MAX_ACTION_CHARS {
            return Err(Status::invalid_argument(format!(
                "field `action` is {chars} characters; say what was done in at most {MAX_ACTION_CHARS}"
            )));
        }
        let isa = self.agreement()?;
        isa.audience(&caller.party, EventType::BreachAcknowledged, "core")
            .map_err(|r| Status::permission_denied(r.0))?;
        // The breach board says which case the breach belongs to; the case's own events decide.
        let lookup = || -> Result<Option<hru_projection::BreachRow>, Status> {
            let projector = self
                .projector
                .lock()
                .map_err(|_| Status::internal("projector unavailable"))?;
            hru_projection::breach(&projector.store, &id).map_err(|e| Status::internal(e.to_string()))
        };
        let row = match lookup()? {
            Some(row) => Some(row),
            None => {
                // The breach may be in the log but not folded yet.
                let (_, last) = self
                    .log
                    .reader()
                    .bounds()
                    .await
                    .map_err(|e| Status::unavailable(e.to_string()))?;
                self.wait_folded(last).await;
                lookup()?
            }
        }
        .ok_or_else(|| {
            Status::not_found(format!(
                "breach {} is not known to this node",
                hex::encode(id.as_bytes())
            ))
        })?;
        let case: CaseId = row
            .case_id
            .parse()
            .map_err(|_| Status::internal("breach row names no case"))?;
        self.log_access(grant, &caller.person, Disclosed::case(case, vec!["core".into()]))
            .await?;
        // Decide on the case's events and append under the case's version: when another
        // operator's acknowledgement lands first, the case is read again and the decision
        // names them.
        let mut at_least = 0;
        for _ in 0..DECIDE_ATTEMPTS {
            let (history, version) = self.case_history(case, at_least).await?;
            let facts = decide::facts(&history);
            let decided = decide::acknowledge(&facts, id).map_err(decide::refusal_status)?;
            let now = jiff::Timestamp::now().as_millisecond();
            let response_time_ms = (now - decided.raised_at_ms).max(0);
            // The figures an evaluation counts, where the agreement in force shares them.
            let figures = isa
                .audience(&caller.party, EventType::BreachAcknowledged, "figures")
                .is_ok()
                .then(|| pb::AcknowledgementFigures {
                    kind: decided.kind.into(),
                    response_time_ms,
                });
            let (event_type, sections) =
                split_draft(pb::event_draft::Event::BreachAcknowledged(pb::BreachAcknowledged {
                    core: Some(pb::AcknowledgementCore {
                        breach_id: id.as_bytes().to_vec(),
                        operator: operator.to_owned(),
                        action: action.to_owned(),
                        response_time_ms,
                    }),
                    figures,
                }));
            match self
                .append_event(case, event_type, sections, now, Expect::CaseAt(version))
                .await?
            {
                Ok((event_id, _)) => {
                    return Ok(pb::AcknowledgeResponse {
                        event_id,
                        response_time_ms,
                    });
                }
                Err(failure) => match failure.conflict() {
                    Some(current) => at_least = current,
                    None => return Err(failure.status(version)),
                },
            }
        }
        Err(Status::aborted(format!(
            "case {case} kept moving while breach {} was being acknowledged; try again",
            hex::encode(id.as_bytes())
        )))
    }
}

impl Shared {
    /// An event as `reader` may see it, opened with the fold's key ring.
    fn visible(
        &self,
        sequence: u64,
        v: &hru_envelope::VerifiedEnvelope,
        reader: &PartyId,
        only: Option<&[String]>,
    ) -> Option<pb::OpenedEvent> {
        let projector = self.projector.lock().ok()?;
        opened_for(
            projector.read_path(),
            &self.deployment.policies,
            sequence,
            v,
            reader,
            only,
        )
    }
}
