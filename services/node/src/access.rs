//! What every service shares: who is calling (from the certificate and metadata), whether the
//! agreement lets them, the access log written before an answer leaves, and what of an event
//! the caller may see.

use std::future::Future;

use hru_domain::{CaseId, EventType, PartyId, split_draft};
use hru_envelope::{AudiencePolicy as _, VerifiedEnvelope};
use hru_log::Expect;
use hru_log::SharedLog as _;
use hru_policy::{CallGrant, CompiledIsa, PolicySet};
use hru_reader::ReadPath;
use hru_wire::v1 as pb;
use tonic::{Request, Status};

use crate::{Shared, tls};

pub use hru_wire::PERSON_HEADER;

/// Why an event could not be appended.
pub(crate) enum AppendFailure {
    /// The agreement does not let it be sealed.
    Seal(hru_envelope::SealError),
    /// The log did not take it.
    Store(hru_log::StoreError),
}

impl AppendFailure {
    /// The case's version now, when another writer got there first.
    pub(crate) fn conflict(&self) -> Option<u64> {
        match self {
            Self::Store(hru_log::StoreError::Append(hru_log::AppendError::Conflict { current, .. })) => Some(*current),
            _ => None,
        }
    }

    /// The answer to a caller whose command appended under the case version `expected`: a
    /// refusal by the agreement is PERMISSION_DENIED, a conflict ABORTED with the version
    /// now, anything else UNAVAILABLE.
    pub(crate) fn status(self, expected: u64) -> Status {
        if let Some(current) = self.conflict() {
            return Status::aborted(format!(
                "the case is at version {current}, not {expected}; re-read it and try again"
            ));
        }
        match self {
            Self::Seal(e) => Status::permission_denied(e.to_string()),
            Self::Store(e) => Status::unavailable(e.to_string()),
        }
    }
}

/// The party and person behind a call.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub(crate) party: PartyId,
    pub(crate) person: String,
}

/// What one access record says beyond the grant and the person.
pub(crate) struct Disclosed {
    pub(crate) case: Option<CaseId>,
    pub(crate) case_ids: Vec<CaseId>,
    pub(crate) sections: Vec<String>,
    pub(crate) disclosed_to: Option<PartyId>,
}

impl Disclosed {
    /// Sections of one case.
    pub(crate) fn case(case: CaseId, sections: Vec<String>) -> Self {
        Self {
            case: Some(case),
            case_ids: vec![case],
            sections,
            disclosed_to: None,
        }
    }
}

impl Shared {
    /// The agreement in force now.
    /// A key ring for a one-off read (the access log): the party's secrets with its period
    /// keys, opening nothing past its retention.
    pub(crate) async fn access_ring(&self) -> hru_envelope::KeyRing {
        let now = jiff::Timestamp::now().as_millisecond();
        let periods = self.periods.lock().await;
        let mut ring = hru_envelope::KeyRing::new(&self.secrets)
            .with_periods(periods.keys(), &hru_envelope::published_through(now));
        ring.destroy_expired(now);
        ring
    }

    /// The directory grants are sealed with (period keys as last read from the log).
    pub(crate) fn sealing_directory(&self) -> std::sync::Arc<hru_envelope::Directory> {
        self.sealing
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Read every party's last period-key publication again.
    pub(crate) async fn refresh_sealing(&self) -> Result<(), crate::NodeError> {
        let directory = hru_log::periods::directory_with_periods(self.log.reader(), &self.deployment.directory).await?;
        *self.sealing.write().unwrap_or_else(std::sync::PoisonError::into_inner) = std::sync::Arc::new(directory);
        Ok(())
    }

    pub(crate) fn agreement(&self) -> Result<&CompiledIsa, Status> {
        self.deployment
            .in_force_now()
            .map_err(|e| Status::failed_precondition(e.to_string()))
    }

    /// The caller's party (from its certificate's `urn:hru:party:` name, issued by that party's
    /// own CA) and person (from metadata).
    pub(crate) fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        let certs = request
            .peer_certs()
            .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
        let leaf = certs
            .first()
            .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
        let party = tls::party_of(leaf.as_ref())
            .and_then(|p| p.parse::<PartyId>().ok())
            .ok_or_else(|| {
                Status::unauthenticated(format!(
                    "the client certificate names no party (a URI subject-alternative name {}<party>)",
                    tls::PARTY_URI
                ))
            })?;
        let issuers = self.party_cas.get(&party).unwrap_or(&self.deployment_cas);
        if !issuers.iter().any(|ca| tls::issued_by(leaf.as_ref(), ca)) {
            return Err(Status::unauthenticated(format!(
                "the client certificate for {party} was not issued by {party}'s CA"
            )));
        }
        let person = request
            .metadata()
            .get(PERSON_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.trim().is_empty())
            .ok_or_else(|| {
                Status::invalid_argument(format!("metadata `{PERSON_HEADER}` is missing: name the person acting"))
            })?
            .to_owned();
        Ok(Caller { party, person })
    }

    /// The caller and the agreement's grant for `method` with `purpose`, or the refusal.
    pub(crate) fn permit<T>(
        &self,
        request: &Request<T>,
        method: &str,
        purpose: &str,
    ) -> Result<(Caller, CallGrant), Status> {
        let caller = self.caller(request)?;
        if purpose.trim().is_empty() {
            return Err(Status::invalid_argument("field `purpose` is missing"));
        }
        let grant = self
            .agreement()?
            .may_call(&caller.party, &self.party, method, purpose)
            .cloned()
            .map_err(|refused| Status::permission_denied(refused.to_string()))?;
        Ok((caller, grant))
    }

    /// Refuse a caller of another party: the node's views and audit answers hold everything
    /// its own party may read, not what the caller's party may (decision 005).
    pub(crate) fn own_party_only(&self, caller: &Caller) -> Result<(), Status> {
        if caller.party == self.party {
            return Ok(());
        }
        Err(Status::permission_denied(format!(
            "this node answers this call for {}'s people only",
            self.party
        )))
    }

    /// Append one AccessLogged event; refuse the answer if it cannot be written.
    pub(crate) async fn log_access(&self, grant: &CallGrant, person: &str, what: Disclosed) -> Result<(), Status> {
        let core = pb::AccessCore {
            party: grant.party.to_string(),
            person: person.to_owned(),
            method: grant.method.clone(),
            sections: what.sections,
            purpose: grant.purpose.clone(),
            clause: grant.clause.clone(),
            disclosed_to: what.disclosed_to.map(|p| p.to_string()).unwrap_or_default(),
            case_ids: what.case_ids.iter().map(|c| c.0.as_bytes().to_vec()).collect(),
        };
        let (event_type, sections) = split_draft(pb::event_draft::Event::AccessLogged(pb::AccessLogged {
            core: Some(core),
        }));
        let case = what.case.unwrap_or(CaseId(uuid::Uuid::nil()));
        let now = jiff::Timestamp::now().as_millisecond();
        match self.append_event(case, event_type, sections, now, Expect::Any).await? {
            Ok(_) => Ok(()),
            Err(AppendFailure::Seal(e)) => Err(Status::failed_precondition(format!(
                "the access log cannot be sealed ({e}); nothing was disclosed"
            ))),
            Err(AppendFailure::Store(e)) => Err(Status::unavailable(format!(
                "the access log could not be written ({e}); nothing was disclosed"
            ))),
        }
    }

    /// Seal one event of this node's party under the agreement in force and append it:
    /// its event id and stream sequence, or why not (the caller says what that means).
    pub(crate) async fn append_event(
        &self,
        case: CaseId,
        event_type: EventType,
        sections: Vec<hru_domain::PlainSection>,
        occurred_at_ms: i64,
        expect: Expect,
    ) -> Result<Result<(Vec<u8>, u64), AppendFailure>, Status> {
        let isa = self.agreement()?;
        let now = jiff::Timestamp::now().as_millisecond();
        let mut producer = self.producer.lock().await;
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_entropy();
        let batch = match producer.sealer().prepare_event(
            case,
            event_type,
            sections,
            occurred_at_ms,
            now,
            isa,
            &self.sealing_directory(),
            &mut rng,
        ) {
            Ok(b) => b,
            Err(e) => return Ok(Err(AppendFailure::Seal(e))),
        };
        let sequences = match producer.append(&self.log, &batch, expect).await {
            Ok(s) => s,
            Err(e) => return Ok(Err(AppendFailure::Store(e))),
        };
        if let Some(last) = sequences.last() {
            self.appended.fetch_max(*last, std::sync::atomic::Ordering::Relaxed);
        }
        let event_id = batch
            .envelopes
            .last()
            .map(|e| e.header.event_id.0.as_bytes().to_vec())
            .unwrap_or_default();
        Ok(Ok((event_id, sequences.last().copied().unwrap_or_default())))
    }

    /// Run one call, counting it and its latency under its method and outcome.
    pub(crate) async fn timed<T>(
        &self,
        method: &str,
        call: impl Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        let start = std::time::Instant::now();
        let result = call.await;
        let code = match &result {
            Ok(_) => "Ok".to_owned(),
            Err(s) => format!("{:?}", s.code()),
        };
        self.metrics.request(method, &code, start.elapsed());
        result
    }

    /// Wait (up to two seconds) until the party's view holds this node's latest append, so a
    /// read after a write sees it (and everything the view sourced before it).
    pub(crate) async fn wait_own_writes(&self) {
        let mine = self.appended.load(std::sync::atomic::Ordering::Relaxed);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while mine > 0 && std::time::Instant::now() < deadline {
            match self.log.reader().last_sequence().await {
                Ok(last) if last >= mine => return,
                Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
                Err(e) => {
                    tracing::warn!(cause = %e, "reading the view's last sequence failed");
                    return;
                }
            }
        }
    }

    /// Wait (up to two seconds) until the fold has passed `sequence`, so every grant an event up
    /// to it needs is in the key ring.
    pub(crate) async fn wait_folded(&self, sequence: u64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while self.folded_through() < sequence && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// The folded head: every grant up to it is in the key ring.
    pub(crate) fn folded_through(&self) -> u64 {
        self.projector.lock().map_or(0, |p| p.resume_from().saturating_sub(1))
    }
}

/// The names of the sections the reader got, event by event.
pub(crate) fn read_sections(events: &[pb::OpenedEvent]) -> Vec<String> {
    events
        .iter()
        .flat_map(|e| {
            e.sections
                .iter()
                .filter(|s| s.refusal.is_empty())
                .map(|s| s.name.clone())
        })
        .collect()
}

/// An event as `reader` may see it: the sections this node can open that both the agreement
/// version the event's header names and the version of that agreement in force now let the
/// reader have (a producer always has its own); `only`, when given, narrows to those section
/// names. Sections the reader may not have are left out, not named; an event with none left
/// is `None`, as are access records and grants.
pub(crate) fn opened_for(
    read: &ReadPath,
    policies: &PolicySet,
    sequence: u64,
    v: &VerifiedEnvelope,
    reader: &PartyId,
    only: Option<&[String]>,
) -> Option<pb::OpenedEvent> {
    if matches!(v.header.event_type, EventType::AccessLogged | EventType::KeyGranted) {
        return None;
    }
    let sealed_under = policies.version(&v.header.policy_id, v.header.policy_version)?;
    let own = v.header.producer.party == *reader;
    let now = policies.in_force(&v.header.policy_id, jiff::Timestamp::now().as_millisecond());
    if now.is_none() && !own {
        return None; // no agreement in force: nothing of another party's is disclosed
    }
    let gives = |isa: &CompiledIsa, section: &str| {
        isa.audience(&v.header.producer.party, v.header.event_type, section)
            .is_ok_and(|a| a.contains(reader))
    };
    let opened = read.open(v);
    let sections: Vec<pb::OpenedSection> = opened
        .sections
        .into_iter()
        .filter(|s| only.is_none_or(|o| o.contains(&s.name)))
        .filter(|s| gives(sealed_under, &s.name) && (own || now.is_some_and(|isa| gives(isa, &s.name))))
        .map(|s| {
            let (plaintext, refusal) = match s.plaintext {
                Ok(p) => (p, String::new()),
                Err(e) => (Vec::new(), e.to_string()),
            };
            pb::OpenedSection {
                name: s.name,
                plaintext,
                refusal,
            }
        })
        .collect();
    if sections.is_empty() {
        return None;
    }
    Some(pb::OpenedEvent {
        sequence,
        header: Some((&v.header).into()),
        sections,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::Arc;

    use hru_domain::{CaseId, ProducerId, split_draft};
    use hru_envelope::fixture::{directory_of, party_secrets};
    use hru_envelope::{Directory, KeyRing, Sealer};
    use hru_policy::CompiledIsa;
    use hru_reader::{Incoming, Read};

    use super::*;

    const AGREEMENT: &str = include_str!("../../../policies/cheshire-hru.toml");
    const IDENTITY_RULE: &str = "sections = [\"identity\"]\nto = [\"police-hru\", \"victim-advocacy\"]";

    /// Version 1 in force until June 2026; version 2 from then, taking the referral's identity
    /// away from victim advocacy.
    fn versions(directory: &Directory) -> PolicySet {
        assert!(AGREEMENT.contains(IDENTITY_RULE), "the agreement's identity rule moved");
        let v1 = AGREEMENT.replace("effective_until = \"2029-01-01\"", "effective_until = \"2026-06-01\"");
        let v2 = AGREEMENT
            .replace("version = 1\n", "version = 2\n")
            .replace("effective_from = \"2026-01-01\"", "effective_from = \"2026-06-01\"")
            .replace(IDENTITY_RULE, "sections = [\"identity\"]\nto = [\"police-hru\"]");
        let mut set = PolicySet::default();
        set.insert(CompiledIsa::compile(&v1, "v1.toml", Some(directory)).unwrap());
        set.insert(CompiledIsa::compile(&v2, "v2.toml", Some(directory)).unwrap());
        set
    }

    #[test]
    fn a_narrowed_agreement_stops_disclosing_what_an_older_version_shared() {
        let parties: Vec<String> = CompiledIsa::compile(AGREEMENT, "x", None)
            .unwrap()
            .parties
            .keys()
            .map(ToString::to_string)
            .collect();
        let directory = directory_of(parties.iter().map(String::as_str), 1);
        let set = versions(&directory);
        let v1 = set.version("cheshire-hru", 1).unwrap();
        // Police seal a referral in March 2026, under version 1.
        let march = 1_772_323_200_000; // 2026-03-01
        let police = party_secrets("police-hru", 1);
        let sealer = Sealer::new(
            ProducerId {
                party: police.party.clone(),
                instance: "n1".into(),
            },
            police.signing.clone(),
        );
        let draft = pb::event_draft::Event::ReferralReceived(pb::ReferralReceived {
            core: Some(pb::ReferralCore {
                subject_ref: vec![1; 32],
                behaviours: vec![pb::Behaviour::Stalking as i32],
                area: "Crewe".into(),
                received_at_ms: march,
                out_of_hours: false,
                crime_reference: String::new(),
            }),
            identity: Some(pb::ReferralIdentity::default()),
            narrative: None,
        });
        let (t, sections) = split_draft(draft);
        let sealed = sealer
            .prepare_event(
                CaseId::random(),
                t,
                sections,
                march,
                march,
                v1,
                &directory,
                &mut rand_core::OsRng,
            )
            .unwrap()
            .envelopes;
        let set = Arc::new(set);
        let sees = |party: &str| -> Vec<String> {
            let mut read = ReadPath::new(directory.clone(), set.clone(), KeyRing::new(&party_secrets(party, 1)));
            let mut last = None;
            for (i, e) in sealed.iter().enumerate() {
                let got = read
                    .read(&Incoming::logged(
                        i as u64 + 1,
                        e.subject.as_str(),
                        &e.bytes,
                        hru_reader::StoredAt::Unknown,
                    ))
                    .unwrap();
                if let Read::Event { envelope, .. } = got {
                    last = Some(envelope);
                }
            }
            let reader: PartyId = party.parse().unwrap();
            opened_for(&read, &set, 9, &last.unwrap(), &reader, None)
                .map(|e| e.sections.into_iter().map(|s| s.name).collect())
                .unwrap_or_default()
        };
        // Version 1 gave advocacy the identity; version 2, in force now, does not.
        assert_eq!(sees("victim-advocacy"), ["core"]);
        // The producer keeps its own record whole.
        assert_eq!(sees("police-hru"), ["core", "identity"]);
    }
}
