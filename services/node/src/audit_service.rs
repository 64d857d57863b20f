//! `AuditService`: verify a range of the log without any secret key, replay envelopes as stored,
//! and answer who consulted or disclosed a case.

use futures::{StreamExt as _, TryStreamExt as _};
use std::sync::Arc;

use hru_audit::{AccessReader, Auditor};
use hru_log::SharedLog as _;
use hru_wire::v1 as pb;
use prost::Message as _;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use crate::Shared;
use crate::access::Disclosed;
use crate::case_service::case_id;

/// The `AuditService` implementation.
pub struct AuditApi {
    shared: Arc<Shared>,
}

impl AuditApi {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

fn range(from: u64, to: u64) -> Result<(u64, Option<u64>), Status> {
    let to = (to > 0).then_some(to);
    if to.is_some_and(|t| t < from) {
        return Err(Status::invalid_argument(format!(
            "field `to_sequence` ({}) is before `from_sequence` ({from})",
            to.unwrap_or_default()
        )));
    }
    Ok((from.max(1), to))
}

fn whole_log() -> Disclosed {
    Disclosed {
        case: None,
        case_ids: Vec::new(),
        sections: vec!["envelopes".into()],
        disclosed_to: None,
    }
}

type ReplayStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::ReplayResponse, Status>> + Send>>;

impl AuditApi {
    /// The log entries of a requested range.
    async fn entries(&self, from: u64, to: u64) -> Result<hru_log::Entries, Status> {
        let (from, to) = range(from, to)?;
        self.shared.wait_own_writes().await;
        let entries = self
            .shared
            .log
            .reader()
            .replay(from, &[])
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(entries
            .try_take_while(move |e| std::future::ready(Ok(to.is_none_or(|t| e.sequence <= t))))
            .boxed())
    }
}

#[tonic::async_trait]
impl pb::audit_service_server::AuditService for AuditApi {
    type ReplayStream = ReplayStream;

    async fn verify(&self, request: Request<pb::VerifyRequest>) -> Result<Response<pb::VerifyResponse>, Status> {
        self.shared
            .timed("AuditService/Verify", self.verify_inner(request))
            .await
    }

    async fn replay(&self, request: Request<pb::ReplayRequest>) -> Result<Response<ReplayStream>, Status> {
        self.shared
            .timed("AuditService/Replay", self.replay_inner(request))
            .await
    }

    async fn access_log(
        &self,
        request: Request<pb::AccessLogRequest>,
    ) -> Result<Response<pb::AccessLogResponse>, Status> {
        self.shared
            .timed("AuditService/AccessLog", self.access_inner(request))
            .await
    }
}

impl AuditApi {
    async fn verify_inner(&self, request: Request<pb::VerifyRequest>) -> Result<Response<pb::VerifyResponse>, Status> {
        let purpose = request.get_ref().purpose.clone();
        let (caller, grant) = self.shared.permit(&request, "AuditService/Verify", &purpose)?;
        self.shared.own_party_only(&caller)?;
        let mut entries = self
            .entries(request.get_ref().from_sequence, request.get_ref().to_sequence)
            .await?;
        // A node reads its party's view: what the agreement shares with it is audited.
        let mut auditor = Auditor::for_party(
            &self.shared.deployment.directory,
            &self.shared.deployment.policies,
            self.shared.party.clone(),
        );
        while let Some(e) = entries
            .try_next()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?
        {
            auditor.observe(e.sequence, e.subject.as_str(), &e.payload, e.stored);
        }
        let report = auditor.finish();
        self.shared.log_access(&grant, &caller.person, whole_log()).await?;
        Ok(Response::new(pb::VerifyResponse {
            checked: report.checked,
            findings: report
                .findings
                .into_iter()
                .map(|f| pb::Finding {
                    sequence: f.sequence,
                    producer: f.producer.map(|p| {
                        let (party, instance) = p.split_once('/').unwrap_or((p.as_str(), ""));
                        pb::Producer {
                            party: party.to_owned(),
                            instance: instance.to_owned(),
                        }
                    }),
                    kind: f.kind.name(),
                    detail: f.detail,
                })
                .collect(),
        }))
    }

    async fn replay_inner(&self, request: Request<pb::ReplayRequest>) -> Result<Response<ReplayStream>, Status> {
        let purpose = request.get_ref().purpose.clone();
        let (caller, grant) = self.shared.permit(&request, "AuditService/Replay", &purpose)?;
        self.shared.own_party_only(&caller)?;
        let mut entries = self
            .entries(request.get_ref().from_sequence, request.get_ref().to_sequence)
            .await?;
        self.shared.log_access(&grant, &caller.person, whole_log()).await?;
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            loop {
                let e = match entries.try_next().await {
                    Ok(Some(e)) => e,
                    Ok(None) => return,
                    Err(err) => {
                        let _ = tx.send(Err(Status::unavailable(err.to_string()))).await;
                        return;
                    }
                };
                let item = pb::Envelope::decode(e.payload.as_ref())
                    .map(|envelope| pb::ReplayResponse {
                        sequence: e.sequence,
                        envelope: Some(envelope),
                    })
                    .map_err(|err| Status::data_loss(format!("sequence {} does not decode: {err}", e.sequence)));
                if tx.send(item).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(futures::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|item| (item, rx)) },
        ))))
    }

    async fn access_inner(
        &self,
        request: Request<pb::AccessLogRequest>,
    ) -> Result<Response<pb::AccessLogResponse>, Status> {
        let purpose = request.get_ref().purpose.clone();
        let (caller, grant) = self.shared.permit(&request, "AuditService/AccessLog", &purpose)?;
        self.shared.own_party_only(&caller)?;
        let case = case_id(&request.get_ref().case_id)?;
        self.shared.wait_own_writes().await;
        let mut entries = self
            .shared
            .log
            .reader()
            .replay(1, &AccessReader::subjects())
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let policies = std::sync::Arc::new(self.shared.deployment.policies.clone());
        let mut reader = AccessReader::new(
            hru_reader::ReadPath::new(
                self.shared.deployment.directory.clone(),
                policies.clone(),
                self.shared.access_ring().await,
            ),
            policies,
            case,
        );
        while let Some(e) = entries
            .try_next()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?
        {
            reader.observe(e.sequence, e.subject.as_str(), &e.payload, e.stored);
        }
        let sections = vec!["access-log".to_owned()];
        self.shared
            .log_access(&grant, &caller.person, Disclosed::case(case, sections))
            .await?;
        Ok(Response::new(pb::AccessLogResponse {
            unreadable: reader.unreadable,
            entries: reader
                .records
                .into_iter()
                .map(|r| pb::AccessEntry {
                    sequence: r.sequence,
                    recorded_at_ms: r.recorded_at_ms,
                    logged_by: Some(pb::Producer {
                        party: r.logged_by.party.to_string(),
                        instance: r.logged_by.instance,
                    }),
                    access: Some(r.wire),
                })
                .collect(),
        }))
    }
}
