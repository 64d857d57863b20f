//! `CaseService`: typed commands sealed and appended, queries answered from projections; every
//! call checked against the agreement and access-logged before it answers.

use futures::TryStreamExt as _;
use std::sync::Arc;

use hru_domain::{CaseEvent, CaseId, split_draft};
use hru_envelope::AudiencePolicy as _;
use hru_log::Expect;
use hru_log::SharedLog as _;
use hru_wire::v1 as pb;
use tonic::{Request, Response, Status};

use crate::Shared;
use crate::access::{Disclosed, opened_for, read_sections};
use crate::views::View;

/// The `CaseService` implementation.
pub struct CaseApi {
    shared: Arc<Shared>,
}

impl CaseApi {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

/// The most section bytes one event may carry: the broker refuses messages over 1 MiB, and
/// the envelope (header, per-section nonces and tags, signature) must fit beside them.
pub const MAX_EVENT_BYTES: usize = 960 * 1024;

/// Event types only the backbone's own machinery writes, never a person through RecordEvent:
/// why, when `event` is one.
fn machinery_only(event: &pb::event_draft::Event) -> Option<&'static str> {
    match event {
        pb::event_draft::Event::AccessLogged(_) => {
            Some("AccessLogged is written only by a node's own access logging, never recorded by a person")
        }
        pb::event_draft::Event::TagBreach(_) => Some(
            "TagBreach is written only by the geofence; a person records BreachAcknowledged through BreachService/Acknowledge",
        ),
        pb::event_draft::Event::BreachAcknowledged(_) => {
            Some("BreachAcknowledged is recorded through BreachService/Acknowledge, which decides on the breach")
        }
        _ => None,
    }
}

pub(crate) fn case_id(bytes: &[u8]) -> Result<CaseId, Status> {
    CaseId::from_wire(bytes, "case_id").map_err(|e| Status::invalid_argument(e.to_string()))
}

#[tonic::async_trait]
impl pb::case_service_server::CaseService for CaseApi {
    async fn record_event(
        &self,
        request: Request<pb::RecordEventRequest>,
    ) -> Result<Response<pb::RecordEventResponse>, Status> {
        self.shared
            .timed("CaseService/RecordEvent", self.record_event_inner(request))
            .await
    }

    async fn get_case(&self, request: Request<pb::GetCaseRequest>) -> Result<Response<pb::GetCaseResponse>, Status> {
        self.shared
            .timed("CaseService/GetCase", self.get_case_inner(request))
            .await
    }

    async fn list_cases(
        &self,
        request: Request<pb::ListCasesRequest>,
    ) -> Result<Response<pb::ListCasesResponse>, Status> {
        self.shared
            .timed("CaseService/ListCases", self.list_cases_inner(request))
            .await
    }
}

impl CaseApi {
    async fn record_event_inner(
        &self,
        request: Request<pb::RecordEventRequest>,
    ) -> Result<Response<pb::RecordEventResponse>, Status> {
        let purpose = request.get_ref().purpose.clone();
        let (caller, grant) = self.shared.permit(&request, "CaseService/RecordEvent", &purpose)?;
        let pb::RecordEventRequest {
            draft,
            expected_version,
            purpose: _,
        } = request.into_inner();
        self.shared.own_party_only(&caller)?;
        let pb::EventDraft {
            case_id: case_text,
            occurred_at,
            event,
        } = draft.ok_or_else(|| Status::invalid_argument("field `draft` is missing"))?;
        let case: CaseId = case_text
            .parse()
            .map_err(|e: hru_domain::FieldError| Status::invalid_argument(format!("draft.{e}")))?;
        let mut event = event.ok_or_else(|| Status::invalid_argument("field `draft.event` is missing"))?;
        if let Some(by) = machinery_only(&event) {
            return Err(Status::invalid_argument(format!("field `draft.event`: {by}")));
        }
        crate::figures::refuse_supplied(&event)?;
        let isa = self.shared.agreement()?;
        // A referral's subject reference is the node's to derive (decision 020).
        crate::linkage::refuse_rekeying(&event)?;
        self.shared.link_referral(isa, &mut event).await?;
        let now = jiff::Timestamp::now().as_millisecond();
        let occurred = if occurred_at.is_empty() {
            now
        } else {
            occurred_at
                .parse::<jiff::Timestamp>()
                .map_err(|e| Status::invalid_argument(format!("field `draft.occurred_at` is not RFC 3339 ({e})")))?
                .as_millisecond()
        };
        if occurred <= 0 {
            return Err(Status::invalid_argument(
                "field `draft.occurred_at` must be after 1970-01-01T00:00:00Z",
            ));
        }
        // Every field is checked before the case is read (a reoffence's subject reference, which
        // the node takes from the case, stands in as zeros here).
        let mut checked = event.clone();
        if isa.linkage.is_some()
            && let pb::event_draft::Event::ReoffenceRecorded(r) = &mut checked
            && let Some(core) = r.core.as_mut()
            && core.subject_ref.is_empty()
        {
            core.subject_ref = vec![0; 32];
        }
        let typed = CaseEvent::try_from(checked).map_err(|e| Status::invalid_argument(format!("draft.{e}")))?;
        // A zone's geometry is checked at the door, as the geofence will read it.
        if let CaseEvent::ZoneDefined { core: Some(zone) } = &typed {
            hru_domain::zone::Zone::parse(zone, None)
                .map_err(|e| Status::invalid_argument(format!("draft.ZoneDefined.core.{}: {}", e.field, e.problem)))?;
        }
        let (event_type, sections) = split_draft(event.clone());
        let size: usize = sections.iter().map(|s| s.bytes.len()).sum();
        if size > MAX_EVENT_BYTES {
            return Err(Status::invalid_argument(format!(
                "field `draft.event`: its sections are {size} bytes; an event may carry at most {MAX_EVENT_BYTES} \
                 bytes (the broker's 1 MiB message limit, less the envelope): attach large documents elsewhere \
                 and record a reference"
            )));
        }
        for s in &sections {
            isa.audience(&caller.party, event_type, s.name)
                .map_err(|r| Status::permission_denied(r.0))?;
        }
        // Decide on the case as the caller saw it: the history up to its expected version.
        let (history, version) = self.shared.case_history(case, expected_version).await?;
        if version > expected_version {
            return Err(Status::aborted(format!(
                "the case is at version {version}, not {expected_version}; re-read it and try again"
            )));
        }
        // A reoffence takes its case's subject reference (decision 020).
        crate::linkage::link_reoffence(isa, &history, &mut event)?;
        let typed = if matches!(event, pb::event_draft::Event::ReoffenceRecorded(_)) {
            CaseEvent::try_from(event.clone()).map_err(|e| Status::invalid_argument(format!("draft.{e}")))?
        } else {
            typed
        };
        let facts = crate::decide::facts(&history);
        crate::decide::record(&facts, &typed).map_err(crate::decide::refusal_status)?;
        // What the node itself writes: out of hours by the agreement's hours, and the figures.
        crate::figures::derive(isa, &caller.party, &mut event, occurred, || {
            self.shared
                .projector
                .lock()
                .map(|p| crate::figures::contacts_discharged(&p.store, case, occurred))
                .unwrap_or((0, 0))
        });
        let (event_type, sections) = split_draft(event);
        let names: Vec<String> = sections.iter().map(|s| s.name.to_owned()).collect();
        self.shared
            .log_access(&grant, &caller.person, Disclosed::case(case, names))
            .await?;
        let (event_id, sequence) = match self
            .shared
            .append_event(case, event_type, sections, occurred, Expect::CaseAt(expected_version))
            .await?
        {
            Ok(done) => done,
            Err(failure) => return Err(failure.status(expected_version)),
        };
        Ok(Response::new(pb::RecordEventResponse { event_id, sequence }))
    }

    async fn get_case_inner(
        &self,
        request: Request<pb::GetCaseRequest>,
    ) -> Result<Response<pb::GetCaseResponse>, Status> {
        let purpose = request.get_ref().purpose.clone();
        let (caller, grant) = self.shared.permit(&request, "CaseService/GetCase", &purpose)?;
        let case = case_id(&request.get_ref().case_id)?;
        let (events, version) = self.shared.case_events(case, &caller.party, None).await?;
        let sections: Vec<String> = read_sections(&events);
        self.shared
            .log_access(&grant, &caller.person, Disclosed::case(case, sections))
            .await?;
        Ok(Response::new(pb::GetCaseResponse { events, version }))
    }

    async fn list_cases_inner(
        &self,
        request: Request<pb::ListCasesRequest>,
    ) -> Result<Response<pb::ListCasesResponse>, Status> {
        let purpose = request.get_ref().purpose.clone();
        let (caller, grant) = self.shared.permit(&request, "CaseService/ListCases", &purpose)?;
        // A node's views are its own party's working records (decision 005).
        self.shared.own_party_only(&caller)?;
        let view = View::find(&request.get_ref().view, &self.shared.views).map_err(Status::invalid_argument)?;
        let rows = {
            let projector = self
                .shared
                .projector
                .lock()
                .map_err(|_| Status::internal("projector unavailable"))?;
            view.rows(
                &projector.store,
                jiff::Timestamp::now().as_millisecond(),
                &self.shared.delivery_units,
            )
            .map_err(|e| Status::internal(e.to_string()))?
        };
        let mut case_ids: Vec<CaseId> = rows.iter().map(|(c, _)| *c).collect();
        case_ids.dedup();
        self.shared
            .log_access(
                &grant,
                &caller.person,
                Disclosed {
                    case: None,
                    case_ids,
                    sections: vec![view.name().to_owned()],
                    disclosed_to: None,
                },
            )
            .await?;
        let rows = rows
            .into_iter()
            .map(|(c, json)| pb::CaseRow {
                case_id: c.0.as_bytes().to_vec(),
                json,
            })
            .collect();
        Ok(Response::new(pb::ListCasesResponse { rows }))
    }
}

/// How long a command waits for this node's view to reach the case version it must decide on.
const VIEW_CATCH_UP: std::time::Duration = std::time::Duration::from_secs(2);

/// One event of a case as this node opened it: (log sequence, header, typed event).
pub(crate) type HistoryEntry = (u64, hru_domain::EventHeader, CaseEvent);

impl Shared {
    /// The case's log entries as this node's view holds them, and the case's version, once
    /// the fold has passed it (so the key ring holds every grant they need).
    async fn case_entries(&self, case: CaseId) -> Result<(Vec<hru_log::LogEntry>, u64), Status> {
        let unavailable = |e: hru_log::LogError| Status::unavailable(e.to_string());
        let entries: Vec<hru_log::LogEntry> = self
            .log
            .reader()
            .replay(1, &[hru_broker::Filter::case_events(case)])
            .await
            .map_err(unavailable)?
            .try_collect()
            .await
            .map_err(unavailable)?;
        let version = entries.last().map_or(0, |e| e.sequence);
        self.wait_folded(version).await;
        Ok((entries, version))
    }

    /// The case's events as this node can open them, and the case's version, once the view
    /// holds at least version `at_least` or has sourced all the log held (a command decides on
    /// the version it appends under).
    pub(crate) async fn case_history(&self, case: CaseId, at_least: u64) -> Result<(Vec<HistoryEntry>, u64), Status> {
        self.wait_own_writes().await;
        let deadline = std::time::Instant::now() + VIEW_CATCH_UP;
        let unavailable = |e: hru_log::LogError| Status::unavailable(e.to_string());
        loop {
            let version = self.log.reader().case_version(case).await.map_err(unavailable)?;
            if version >= at_least || std::time::Instant::now() >= deadline {
                break;
            }
            // The case's newest events may be ones this party is not entitled to: once the view
            // has sourced everything the log held, what it shows is all there is to see.
            if self.log.reader().caught_up().await.map_err(unavailable)?
                && self.log.reader().case_version(case).await.map_err(unavailable)? == version
            {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let (entries, version) = self.case_entries(case).await?;
        let projector = self
            .projector
            .lock()
            .map_err(|_| Status::internal("projector unavailable"))?;
        let read = projector.read_path();
        let history = checked(read, &entries)
            .into_iter()
            .filter_map(|(sequence, v)| {
                let event = hru_projection::open_typed(&read.open(&v))?.ok()?;
                Some((sequence, v.header, event))
            })
            .collect();
        Ok((history, version))
    }

    /// A case's events as `reader` may see them (narrowed to `only` sections when given), and
    /// the case's version.
    pub(crate) async fn case_events(
        &self,
        case: CaseId,
        reader: &hru_domain::PartyId,
        only: Option<&[String]>,
    ) -> Result<(Vec<pb::OpenedEvent>, u64), Status> {
        self.wait_own_writes().await;
        let (entries, version) = self.case_entries(case).await?;
        let projector = self
            .projector
            .lock()
            .map_err(|_| Status::internal("projector unavailable"))?;
        let read = projector.read_path();
        let events = checked(read, &entries)
            .into_iter()
            .filter_map(|(sequence, v)| opened_for(read, &self.deployment.policies, sequence, &v, reader, only))
            .collect();
        Ok((events, version))
    }

    /// The entries the read path accepts, verified (the fold counted and logged the refused).
    pub(crate) fn checked(&self, entries: &[hru_log::LogEntry]) -> Vec<(u64, hru_envelope::VerifiedEnvelope)> {
        match self.projector.lock() {
            Ok(projector) => checked(projector.read_path(), entries),
            Err(_) => Vec::new(),
        }
    }
}

/// The entries `read` accepts, verified; refusals are skipped (the fold reported them).
fn checked(read: &hru_reader::ReadPath, entries: &[hru_log::LogEntry]) -> Vec<(u64, hru_envelope::VerifiedEnvelope)> {
    entries
        .iter()
        .filter_map(|e| {
            read.check(&hru_reader::Incoming::logged(
                e.sequence,
                e.subject.as_str(),
                &e.payload,
                e.stored,
            ))
            .map_err(|refusal| tracing::debug!(%refusal, "not served"))
            .ok()
            .map(|v| (e.sequence, v))
        })
        .collect()
}
