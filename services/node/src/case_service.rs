//! `CaseService`: typed commands sealed and appended, queries answered from projections; every
//! call checked against the agreement and access-logged before it answers.

use std::future::Future;
use std::sync::Arc;

use hru_domain::{CaseEvent, CaseId, EventType, PartyId, split_draft};
use hru_envelope::{AudiencePolicy as _, verify};
use hru_log::{AppendError, Expect, StoreError};
use hru_policy::CompiledIsa;
use hru_projection::{CaseBoard, screening_queue};
use hru_wire::v1 as pb;
use tonic::{Request, Response, Status};

use crate::{Shared, tls};

/// Metadata key naming the person acting (DPA 2018 s62 logs people, not only parties).
pub const PERSON_HEADER: &str = "x-hru-person";

/// The `CaseService` implementation.
pub struct CaseApi {
    shared: Arc<Shared>,
}

impl CaseApi {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    fn agreement(&self) -> Result<&CompiledIsa, Status> {
        let now = jiff::Timestamp::now().as_millisecond();
        let id = self
            .shared
            .policies
            .iter()
            .next()
            .map(|i| i.id.clone())
            .unwrap_or_default();
        self.shared
            .policies
            .in_force(&id, now)
            .ok_or_else(|| Status::failed_precondition("no agreement is in force"))
    }

    /// The caller's party (from its certificate) and person (from metadata).
    fn caller<T>(request: &Request<T>) -> Result<(PartyId, String), Status> {
        let certs = request
            .peer_certs()
            .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
        let party = certs
            .first()
            .and_then(|c| tls::party_of(c.as_ref()))
            .and_then(|p| p.parse::<PartyId>().ok())
            .ok_or_else(|| Status::unauthenticated("the client certificate names no party"))?;
        let person = request
            .metadata()
            .get(PERSON_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.trim().is_empty())
            .ok_or_else(|| {
                Status::invalid_argument(format!("metadata `{PERSON_HEADER}` is missing: name the person acting"))
            })?
            .to_owned();
        Ok((party, person))
    }

    fn permit(&self, party: &PartyId, method: &str, purpose: &str) -> Result<hru_policy::CallGrant, Status> {
        if purpose.trim().is_empty() {
            return Err(Status::invalid_argument("field `purpose` is missing"));
        }
        self.agreement()?
            .may_call(party, method, purpose)
            .cloned()
            .map_err(Status::permission_denied)
    }

    /// Append one AccessLogged event; refuse the answer if it cannot be written.
    async fn log_access(
        &self,
        grant: &hru_policy::CallGrant,
        person: &str,
        case: Option<CaseId>,
        case_ids: Vec<CaseId>,
        sections: Vec<String>,
    ) -> Result<(), Status> {
        let core = pb::AccessCore {
            party: grant.party.to_string(),
            person: person.to_owned(),
            method: grant.method.clone(),
            sections,
            purpose: grant.purpose.clone(),
            clause: grant.clause.clone(),
            disclosed_to: String::new(),
            case_ids: case_ids.iter().map(|c| c.0.as_bytes().to_vec()).collect(),
        };
        let (event_type, sections) = split_draft(pb::event_draft::Event::AccessLogged(pb::AccessLogged {
            core: Some(core),
        }));
        let isa = self.agreement()?;
        let now = jiff::Timestamp::now().as_millisecond();
        let mut producer = self.shared.producer.lock().await;
        let case = case.unwrap_or(CaseId(uuid::Uuid::nil()));
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_entropy();
        let batch = producer
            .sealer()
            .prepare_event(
                case,
                event_type,
                sections,
                now,
                now,
                isa,
                &self.shared.directory,
                &mut rng,
            )
            .map_err(|e| {
                Status::failed_precondition(format!("the access log cannot be sealed ({e}); nothing was disclosed"))
            })?;
        producer
            .append(&self.shared.log, &batch, Expect::Any)
            .await
            .map_err(|e| {
                Status::unavailable(format!(
                    "the access log could not be written ({e}); nothing was disclosed"
                ))
            })?;
        Ok(())
    }
}

fn case_id(bytes: &[u8]) -> Result<CaseId, Status> {
    CaseId::from_wire(bytes, "case_id").map_err(|e| Status::invalid_argument(e.to_string()))
}

impl CaseApi {
    /// Run one call, counting it and its latency under its method and outcome.
    async fn timed<T>(&self, method: &str, call: impl Future<Output = Result<T, Status>>) -> Result<T, Status> {
        let start = std::time::Instant::now();
        let result = call.await;
        let code = match &result {
            Ok(_) => "Ok".to_owned(),
            Err(s) => format!("{:?}", s.code()),
        };
        self.shared.metrics.request(method, &code, start.elapsed());
        result
    }
}

#[tonic::async_trait]
impl pb::case_service_server::CaseService for CaseApi {
    async fn record_event(
        &self,
        request: Request<pb::RecordEventRequest>,
    ) -> Result<Response<pb::RecordEventResponse>, Status> {
        self.timed("CaseService/RecordEvent", self.record_event_inner(request))
            .await
    }

    async fn get_case(&self, request: Request<pb::GetCaseRequest>) -> Result<Response<pb::GetCaseResponse>, Status> {
        self.timed("CaseService/GetCase", self.get_case_inner(request)).await
    }

    async fn list_cases(
        &self,
        request: Request<pb::ListCasesRequest>,
    ) -> Result<Response<pb::ListCasesResponse>, Status> {
        self.timed("CaseService/ListCases", self.list_cases_inner(request))
            .await
    }
}

impl CaseApi {
    async fn record_event_inner(
        &self,
        request: Request<pb::RecordEventRequest>,
    ) -> Result<Response<pb::RecordEventResponse>, Status> {
        let (party, person) = Self::caller(&request)?;
        let pb::RecordEventRequest {
            draft,
            expected_version,
            purpose,
        } = request.into_inner();
        let grant = self.permit(&party, "CaseService/RecordEvent", &purpose)?;
        if party != self.shared.party {
            return Err(Status::permission_denied(format!(
                "this node records events for {} only",
                self.shared.party
            )));
        }
        let pb::EventDraft {
            case_id: case_text,
            occurred_at,
            event,
        } = draft.ok_or_else(|| Status::invalid_argument("field `draft` is missing"))?;
        let case: CaseId = case_text
            .parse()
            .map_err(|e: hru_domain::FieldError| Status::invalid_argument(format!("draft.{e}")))?;
        let event = event.ok_or_else(|| Status::invalid_argument("field `draft.event` is missing"))?;
        CaseEvent::try_from(event.clone()).map_err(|e| Status::invalid_argument(format!("draft.{e}")))?;
        let now = jiff::Timestamp::now().as_millisecond();
        let occurred = if occurred_at.is_empty() {
            now
        } else {
            occurred_at
                .parse::<jiff::Timestamp>()
                .map_err(|e| Status::invalid_argument(format!("field `draft.occurred_at` is not RFC 3339 ({e})")))?
                .as_millisecond()
        };
        let (event_type, sections) = split_draft(event);
        let names: Vec<String> = sections.iter().map(|s| s.name.to_owned()).collect();
        let isa = self.agreement()?;
        for s in &names {
            isa.audience(&party, event_type, s)
                .map_err(|r| Status::permission_denied(r.0))?;
        }
        self.log_access(&grant, &person, Some(case), vec![case], names).await?;
        let mut producer = self.shared.producer.lock().await;
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_entropy();
        let batch = producer
            .sealer()
            .prepare_event(
                case,
                event_type,
                sections,
                occurred,
                now,
                isa,
                &self.shared.directory,
                &mut rng,
            )
            .map_err(|e| Status::permission_denied(e.to_string()))?;
        let sequences = producer
            .append(&self.shared.log, &batch, Expect::CaseAt(expected_version))
            .await
            .map_err(|e| match e {
                StoreError::Append(AppendError::Conflict { current, .. }) => Status::aborted(format!(
                    "the case is at version {current}, not {expected_version}; re-read it and try again"
                )),
                other => Status::unavailable(other.to_string()),
            })?;
        let event_id = batch
            .envelopes
            .last()
            .map(|e| e.header.event_id.0.as_bytes().to_vec())
            .unwrap_or_default();
        Ok(Response::new(pb::RecordEventResponse {
            event_id,
            sequence: sequences.last().copied().unwrap_or_default(),
        }))
    }

    async fn get_case_inner(
        &self,
        request: Request<pb::GetCaseRequest>,
    ) -> Result<Response<pb::GetCaseResponse>, Status> {
        let (party, person) = Self::caller(&request)?;
        let pb::GetCaseRequest {
            case_id: case_bytes,
            purpose,
        } = request.into_inner();
        let case = case_id(&case_bytes)?;
        let grant = self.permit(&party, "CaseService/GetCase", &purpose)?;
        let entries = self
            .shared
            .log
            .replay(1, &[format!("hru.evt.{}.>", case.token())])
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let mut events = Vec::new();
        let isa = self.agreement()?;
        {
            let projector = self
                .shared
                .projector
                .lock()
                .map_err(|_| Status::internal("projector unavailable"))?;
            for e in &entries {
                let Ok(v) = verify(&e.payload, projector.directory()) else {
                    continue;
                };
                if v.header.event_type == EventType::AccessLogged {
                    continue;
                }
                let opened = projector.ring().open(&v);
                // Only what the agreement lets the caller see of this node's view.
                let sections = opened
                    .sections
                    .into_iter()
                    .map(|s| {
                        let allowed = isa
                            .audience(&v.header.producer.party, v.header.event_type, &s.name)
                            .is_ok_and(|a| a.contains(&party));
                        match (allowed, s.plaintext) {
                            (true, Ok(p)) => pb::OpenedSection {
                                name: s.name,
                                plaintext: p,
                                refusal: String::new(),
                            },
                            (false, _) => pb::OpenedSection {
                                name: s.name,
                                plaintext: Vec::new(),
                                refusal: format!("not shared with {party}"),
                            },
                            (true, Err(e)) => pb::OpenedSection {
                                name: s.name,
                                plaintext: Vec::new(),
                                refusal: e.to_string(),
                            },
                        }
                    })
                    .collect();
                events.push(pb::OpenedEvent {
                    sequence: e.sequence,
                    header: Some((&v.header).into()),
                    sections,
                });
            }
        }
        let sections: Vec<String> = events
            .iter()
            .flat_map(|e| {
                e.sections
                    .iter()
                    .filter(|s| s.refusal.is_empty())
                    .map(|s| s.name.clone())
            })
            .collect();
        self.log_access(&grant, &person, Some(case), vec![case], sections)
            .await?;
        let version = entries
            .iter()
            .filter(|e| !e.subject.ends_with(".AccessLogged"))
            .map(|e| e.sequence)
            .max()
            .unwrap_or(0);
        Ok(Response::new(pb::GetCaseResponse { events, version }))
    }

    async fn list_cases_inner(
        &self,
        request: Request<pb::ListCasesRequest>,
    ) -> Result<Response<pb::ListCasesResponse>, Status> {
        let (party, person) = Self::caller(&request)?;
        let pb::ListCasesRequest { view, purpose } = request.into_inner();
        let grant = self.permit(&party, "CaseService/ListCases", &purpose)?;
        let rows: Vec<(CaseId, String)> = {
            let projector = self
                .shared
                .projector
                .lock()
                .map_err(|_| Status::internal("projector unavailable"))?;
            let to_row = |case: &str, json: String| case.parse::<CaseId>().ok().map(|c| (c, json));
            match view.as_str() {
                "case-board" => CaseBoard::rows(&projector.store)
                    .map_err(|e| Status::internal(e.to_string()))?
                    .into_iter()
                    .filter_map(|r| to_row(&r.case_id.clone(), serde_json::to_string(&r).unwrap_or_default()))
                    .collect(),
                "screening-queue" => screening_queue(&projector.store, jiff::Timestamp::now().as_millisecond())
                    .map_err(|e| Status::internal(e.to_string()))?
                    .into_iter()
                    .filter_map(|r| to_row(&r.case_id.clone(), serde_json::to_string(&r).unwrap_or_default()))
                    .collect(),
                "review-schedule" => {
                    let now = jiff::Timestamp::now().as_millisecond();
                    hru_projection::review_schedule(&projector.store)
                        .map_err(|e| Status::internal(e.to_string()))?
                        .into_iter()
                        .filter_map(|r| {
                            let row = serde_json::json!({"review": &r, "status": r.status(now)});
                            to_row(&r.case_id.clone(), row.to_string())
                        })
                        .collect()
                }
                other => {
                    return Err(Status::invalid_argument(format!(
                        "field `view`: {other:?} is not a view; use \"case-board\", \"screening-queue\" or \"review-schedule\""
                    )));
                }
            }
        };
        self.log_access(
            &grant,
            &person,
            None,
            rows.iter().map(|(c, _)| *c).collect(),
            vec![view.clone()],
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
