//! The hostile-party suite. Every party of the Cheshire agreement, acting with its own genuine
//! nkey, signing key and TLS certificate, tries what a curious or compromised partner would,
//! against a real nats-server enforcing the authorization generated from the agreement and real
//! party nodes (`hru node run`). The suite prints the matrix (party × attack → outcome) and
//! fails if any attack succeeds.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use std::collections::BTreeSet;
use std::time::Duration;

use futures::StreamExt as _;
use hru_broker::Subject;
use hru_domain::{CaseId, EventType, PartyId, PlainSection, ProducerId};
use hru_envelope::{Directory, PartySecrets, SealedEnvelope, Sealer, StaticAudiences};
use hru_policy::CompiledIsa;
use hru_tests::{CHESHIRE_PARTIES, NodeProcess, World, free_port, metric, request};
use hru_wire::v1 as pb;
use pb::audit_service_client::AuditServiceClient;
use pb::breach_service_client::BreachServiceClient;
use pb::case_service_client::CaseServiceClient;
use pb::subscription_service_client::SubscriptionServiceClient;
use prost::Message as _;
use tonic::transport::Channel;

/// The parties whose nodes run in the suite.
const NODES: [&str; 4] = ["police-hru", "victim-advocacy", "probation", "police-control"];

/// Every view name a node may hold.
const VIEWS: [&str; 7] = [
    "case-board",
    "screening-queue",
    "review-schedule",
    "advocacy",
    "probation-caseload",
    "outcomes",
    "breach-board",
];

#[derive(Debug, Clone)]
enum Outcome {
    /// The attack got nothing: how it was stopped.
    Refused(String),
    /// The attack got through: what it got.
    Succeeded(String),
}

#[derive(Default)]
struct Matrix {
    rows: Vec<(String, String, Outcome)>,
}

impl Matrix {
    fn row(&mut self, party: &str, attack: impl Into<String>, outcome: Outcome) {
        self.rows.push((party.to_owned(), attack.into(), outcome));
    }

    fn print(&self) {
        println!("{:<16} {:<64} outcome", "party", "attack");
        for (party, attack, outcome) in &self.rows {
            let outcome = match outcome {
                Outcome::Refused(how) => format!("refused: {how}"),
                Outcome::Succeeded(what) => format!("SUCCEEDED: {what}"),
            };
            println!("{party:<16} {attack:<64} {outcome}");
        }
    }

    fn successes(&self) -> usize {
        self.rows
            .iter()
            .filter(|(.., o)| matches!(o, Outcome::Succeeded(_)))
            .count()
    }
}

struct Suite {
    w: World,
    isa: CompiledIsa,
    directory: Directory,
    nodes: Vec<(NodeProcess, u16)>,
    case: CaseId,
    /// Log sequences of everything the suite published straight to the broker once the honest
    /// set-up was done: what an honest log would not hold.
    planted: std::sync::Mutex<Vec<u64>>,
}

impl Suite {
    fn secrets(&self, party: &str) -> PartySecrets {
        self.w.secrets(party)
    }

    fn node(&self, party: &str) -> &NodeProcess {
        &self.nodes.iter().find(|(n, _)| n.party == party).unwrap().0
    }

    fn metrics_port(&self, party: &str) -> u16 {
        self.nodes.iter().find(|(n, _)| n.party == party).unwrap().1
    }

    /// The purpose `party`'s rules give for `method` (any of its purposes when none does).
    fn purpose(&self, party: &str, method: &str) -> String {
        let calls = || self.isa.calls.iter().filter(|g| g.party.as_str() == party);
        calls()
            .find(|g| g.method == method)
            .or_else(|| calls().next())
            .map_or_else(|| "none".to_owned(), |g| g.purpose.clone())
    }

    async fn channel(&self, node: &str, as_party: &str) -> Channel {
        self.w.channel(self.node(node), as_party).await
    }

    /// The (producer, event type) of every event of `case` `node` serves its own party.
    async fn served(&self, node: &str, case: CaseId) -> Vec<(String, String, u64)> {
        let channel = self.channel(node, node).await;
        let answer = CaseServiceClient::new(channel)
            .get_case(request(
                pb::GetCaseRequest {
                    case_id: case.0.as_bytes().to_vec(),
                    purpose: self.purpose(node, "CaseService/GetCase"),
                },
                "observer",
            ))
            .await
            .unwrap_or_else(|s| panic!("{node} answers its own party: {}", s.message()))
            .into_inner();
        answer
            .events
            .iter()
            .filter_map(|e| {
                let h = e.header.as_ref()?;
                Some((h.producer.as_ref()?.party.clone(), h.event_type.clone(), e.sequence))
            })
            .collect()
    }

    /// Publish `bytes` on `subject` with `party`'s own nkey; the stream sequence the broker
    /// stored it at, or why it refused.
    async fn publish(&self, party: &str, subject: &str, bytes: Vec<u8>) -> Result<u64, String> {
        let secrets = self.secrets(party);
        let client = hru_broker::connect(&self.w.nats.url(), Some(&secrets.broker_identity()))
            .await
            .map_err(|e| e.to_string())?;
        let js = async_nats::jetstream::new(client);
        let ack = js
            .publish(subject.to_owned(), bytes.into())
            .await
            .map_err(|e| e.to_string())?;
        let sequence = tokio::time::timeout(Duration::from_secs(3), ack)
            .await
            .map_err(|_| "no acknowledgement (refused by the broker)".to_owned())?
            .map(|a| a.sequence)
            .map_err(|e| e.to_string())?;
        self.planted.lock().unwrap().push(sequence);
        Ok(sequence)
    }

    /// `party` seals `event_type` with `sections` under a policy that claims the agreement's own
    /// id and version and shares every section with `to`.
    fn forge(
        &self,
        party: &str,
        case: CaseId,
        event_type: EventType,
        sections: Vec<PlainSection>,
        to: &BTreeSet<PartyId>,
    ) -> Vec<SealedEnvelope> {
        let secrets = self.secrets(party);
        let to: Vec<PartyId> = to.iter().cloned().collect();
        let mut policy = StaticAudiences::new(&self.isa.id, self.isa.version);
        for s in event_type.sections() {
            policy = policy.share(event_type, s, &to);
        }
        let now = jiff::Timestamp::now().as_millisecond();
        Sealer::new(
            ProducerId {
                party: secrets.party.clone(),
                instance: format!("forger-{}", uuid::Uuid::now_v7().simple()),
            },
            secrets.signing.clone(),
        )
        .prepare_event(
            case,
            event_type,
            sections,
            now,
            now,
            &policy,
            &self.directory,
            &mut rand_core::OsRng,
        )
        .unwrap()
        .envelopes
    }

    /// The widest audience `party` seals a case section to, and the type and section: what its
    /// forgeries ride on so that the most readers' views source them.
    fn widest(&self, party: &str) -> Option<(EventType, BTreeSet<PartyId>)> {
        self.isa
            .audiences()
            .filter(|(p, t, ..)| p.as_str() == party && t.has_case())
            .max_by_key(|(_, t, _, a)| (a.members().len(), *t != EventType::AccessLogged, std::cmp::Reverse(*t)))
            .map(|(_, t, _, a)| (t, a.members().clone()))
    }
}

fn subject_for(case: CaseId, party: &PartyId, event_type: EventType) -> Subject {
    if event_type == EventType::AccessLogged {
        Subject::access(case, party)
    } else {
        Subject::event(case, party, event_type)
    }
}

/// An event type `party` may not produce, and sections of it that decode.
fn forbidden_event(isa: &CompiledIsa, party: &PartyId) -> (EventType, Vec<PlainSection>) {
    if !isa.may_produce(party, EventType::CaseClosed) {
        let core = pb::CaseClosedCore {
            reason: "closed by a partner that may not close cases".into(),
            closed_at_ms: jiff::Timestamp::now().as_millisecond(),
        };
        return (
            EventType::CaseClosed,
            vec![PlainSection {
                name: "core",
                bytes: core.encode_to_vec(),
            }],
        );
    }
    let core = pb::AcknowledgementCore {
        breach_id: vec![9; 16],
        operator: "nobody".into(),
        action: "stand down".into(),
        response_time_ms: 1,
    };
    (
        EventType::BreachAcknowledged,
        vec![PlainSection {
            name: "core",
            bytes: core.encode_to_vec(),
        }],
    )
}

fn referral(case: CaseId, narrative: String) -> pb::EventDraft {
    pb::EventDraft {
        case_id: case.to_string(),
        occurred_at: String::new(),
        event: Some(pb::event_draft::Event::ReferralReceived(pb::ReferralReceived {
            core: Some(pb::ReferralCore {
                subject_ref: vec![3; 32],
                behaviours: vec![pb::Behaviour::Stalking as i32],
                area: "Warrington".into(),
                received_at_ms: jiff::Timestamp::now().as_millisecond(),
                out_of_hours: false,
                crime_reference: String::new(),
            }),
            identity: None,
            narrative: Some(pb::ReferralNarrative { text: narrative }),
        })),
    }
}

/// A call's outcome: only a refusal by rule or input counts as refused; any other error (a
/// node that failed, or an answer a client would retry) is not a refusal.
fn outcome<T>(r: Result<T, tonic::Status>, what: &str) -> Outcome {
    use tonic::Code;
    match r {
        Ok(_) => Outcome::Succeeded(what.to_owned()),
        Err(s) => match s.code() {
            Code::PermissionDenied | Code::InvalidArgument | Code::ResourceExhausted | Code::Unauthenticated => {
                Outcome::Refused(format!("{:?}", s.code()))
            }
            other => Outcome::Succeeded(format!("answered {other:?} ({}), not a refusal", s.message())),
        },
    }
}

/// Every party's forgeries on the log: a header naming a type it may not produce, published
/// under a subject it may use; another producer's genuine envelope under its own subject.
async fn forgeries(s: &Suite, m: &mut Matrix, genuine: &[SealedEnvelope]) {
    let mut planted = Vec::new();
    for party in CHESHIRE_PARTIES {
        let id: PartyId = party.parse().unwrap();
        let Some((rides_on, readers)) = s.widest(party) else {
            m.row(
                party,
                "forged header",
                Outcome::Refused("it seals no case section".into()),
            );
            continue;
        };
        let (forbidden, sections) = forbidden_event(&s.isa, &id);
        let sealed = s.forge(party, s.case, forbidden, sections, &readers);
        let (event, grants) = sealed.split_last().unwrap();
        let mut published = Ok(0);
        for g in grants {
            published = s.publish(party, g.subject.as_str(), g.bytes.clone()).await;
        }
        let under = subject_for(s.case, &id, rides_on);
        if published.is_ok() {
            published = s.publish(party, under.as_str(), event.bytes.clone()).await;
        }
        let attack = format!("header says {forbidden}, published under its {rides_on}");
        match published {
            Ok(_) => planted.push((party, attack, forbidden, readers.clone())),
            Err(e) => m.row(party, attack, Outcome::Refused(format!("broker: {e}"))),
        }
        // Police's genuine referral, re-published under this party's own subject.
        if party != "police-hru" {
            let attack = format!("police-hru's referral re-published under its {rides_on}");
            match s
                .publish(party, under.as_str(), genuine.last().unwrap().bytes.clone())
                .await
            {
                Ok(_) => planted.push((party, attack, EventType::ReferralReceived, readers.clone())),
                Err(e) => m.row(party, attack, Outcome::Refused(format!("broker: {e}"))),
            }
        }
    }
    // Give every node's fold time to take in what the broker stored, then look.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (party, attack, event_type, readers) in planted {
        let mut found = Vec::new();
        for node in NODES
            .iter()
            .filter(|n| **n != party && readers.iter().any(|r| r.as_str() == **n))
        {
            let served = s.served(node, s.case).await;
            let forged_type = event_type != EventType::ReferralReceived
                && served.iter().any(|(p, t, _)| p == party && *t == event_type.name());
            let copies = served
                .iter()
                .filter(|(p, t, _)| p == "police-hru" && t == "ReferralReceived")
                .count();
            // Police's two genuine referrals (the node's and its own re-publishable one) are
            // served; a third is the re-published copy.
            if forged_type || (event_type == EventType::ReferralReceived && copies > 2) {
                found.push(*node);
            }
        }
        let outcome = if found.is_empty() {
            Outcome::Refused("stored by the broker, never served by a node".into())
        } else {
            Outcome::Succeeded(format!("served as genuine by {}", found.join(", ")))
        };
        m.row(party, attack, outcome);
    }
}

/// Every party publishing, with its own key and under its own access subject, an access record
/// that names another party's person reading the case's identities.
async fn forged_access_records(s: &Suite, m: &mut Matrix) {
    let police: PartyId = "police-hru".parse().unwrap();
    let mut planted = Vec::new();
    for party in CHESHIRE_PARTIES {
        let id: PartyId = party.parse().unwrap();
        let Ok(audience) = hru_envelope::AudiencePolicy::audience(&s.isa, &id, EventType::AccessLogged, "core") else {
            m.row(
                party,
                "AccessLogged published directly",
                Outcome::Refused("it may seal no access record".into()),
            );
            continue;
        };
        if !audience.contains(&police) {
            continue; // police-hru, the DPO's party, could not read it either way
        }
        let person = format!("PO Mallory for {party}");
        let core = pb::AccessCore {
            party: if party == "probation" { "cwp" } else { "probation" }.into(),
            person: person.clone(),
            method: "CaseService/GetCase".into(),
            sections: vec!["identity".into()],
            purpose: "offender-management".into(),
            clause: "10.1".into(),
            disclosed_to: String::new(),
            case_ids: vec![s.case.0.as_bytes().to_vec()],
        };
        let sealed = s.forge(
            party,
            s.case,
            EventType::AccessLogged,
            vec![PlainSection {
                name: "core",
                bytes: core.encode_to_vec(),
            }],
            audience.members(),
        );
        let mut published = Ok(0);
        for e in &sealed {
            if published.is_ok() {
                published = s.publish(party, e.subject.as_str(), e.bytes.clone()).await;
            }
        }
        match published {
            Ok(_) => planted.push((party, person)),
            Err(e) => m.row(
                party,
                "AccessLogged published directly",
                Outcome::Refused(format!("broker: {e}")),
            ),
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let log = AuditServiceClient::new(s.channel("police-hru", "police-hru").await)
        .access_log(request(
            pb::AccessLogRequest {
                case_id: s.case.0.as_bytes().to_vec(),
                purpose: "accountability".into(),
            },
            "DPO",
        ))
        .await
        .expect("police-hru reads its access log")
        .into_inner();
    for (party, person) in planted {
        let listed = log
            .entries
            .iter()
            .any(|e| e.access.as_ref().is_some_and(|a| a.person == person));
        m.row(
            party,
            "AccessLogged published directly, naming another party's person",
            if listed {
                Outcome::Succeeded("listed as that party's access by police-hru's AccessLog".into())
            } else {
                Outcome::Refused("not listed as an access".into())
            },
        );
    }
}

/// One party opening 1,000 streams on its own node, and a 64 MiB request: refused by limits,
/// and the node still answers.
async fn floods(s: &Suite, m: &mut Matrix) {
    let channel = s.channel("police-hru", "police-hru").await;
    let mut open = Vec::new();
    let mut stopped = None;
    for _ in 0..1_000 {
        let r = SubscriptionServiceClient::new(channel.clone())
            .subscribe(request(
                pb::SubscribeRequest {
                    case_id: s.case.0.as_bytes().to_vec(),
                    event_types: Vec::new(),
                    from_sequence: 0,
                    purpose: "risk-management".into(),
                },
                "flood",
            ))
            .await;
        match r {
            Ok(stream) => open.push(stream.into_inner()),
            Err(status) => {
                stopped = Some(status);
                break;
            }
        }
    }
    let opened = open.len();
    m.row(
        "police-hru",
        "1,000 Subscribe streams on its own node",
        match stopped {
            Some(st) if st.code() == tonic::Code::ResourceExhausted => {
                Outcome::Refused(format!("ResourceExhausted after {opened} open streams"))
            }
            Some(st) => Outcome::Succeeded(format!("{opened} opened, then {:?} ({})", st.code(), st.message())),
            None => Outcome::Succeeded("all 1,000 open".into()),
        },
    );
    drop(open);

    let r = CaseServiceClient::new(channel)
        .record_event(request(
            pb::RecordEventRequest {
                draft: Some(referral(CaseId::random(), "x".repeat(64 << 20))),
                expected_version: 0,
                purpose: "risk-management".into(),
            },
            "DS Morgan",
        ))
        .await;
    m.row(
        "police-hru",
        "RecordEvent as a 64 MiB request",
        match r {
            // tonic refuses a message over its decoding limit with OUT_OF_RANGE.
            Err(st) if st.code() == tonic::Code::OutOfRange => Outcome::Refused("OutOfRange before decoding".into()),
            other => outcome(other, "stored"),
        },
    );
}

/// Every party's people calling every method on every other party's node.
async fn foreign_calls(s: &Suite, m: &mut Matrix) {
    let case = s.case.0.as_bytes().to_vec();
    for party in CHESHIRE_PARTIES {
        for node in NODES.iter().filter(|n| **n != party) {
            let channel = s.channel(node, party).await;
            let mut got = Vec::new();
            for view in VIEWS {
                let r = CaseServiceClient::new(channel.clone())
                    .list_cases(request(
                        pb::ListCasesRequest {
                            view: view.into(),
                            purpose: s.purpose(party, "CaseService/ListCases"),
                        },
                        "curious",
                    ))
                    .await;
                if r.is_ok() {
                    got.push(view);
                }
            }
            m.row(
                party,
                format!("ListCases (every view) on {node}'s node"),
                if got.is_empty() {
                    Outcome::Refused("every view".into())
                } else {
                    Outcome::Succeeded(format!("views {}", got.join(", ")))
                },
            );
            let r = CaseServiceClient::new(channel.clone())
                .get_case(request(
                    pb::GetCaseRequest {
                        case_id: case.clone(),
                        purpose: s.purpose(party, "CaseService/GetCase"),
                    },
                    "curious",
                ))
                .await;
            m.row(
                party,
                format!("GetCase on {node}'s node"),
                outcome(r, "the case's events"),
            );
            let r = SubscriptionServiceClient::new(channel.clone())
                .subscribe(request(
                    pb::SubscribeRequest {
                        case_id: Vec::new(),
                        event_types: Vec::new(),
                        from_sequence: 0,
                        purpose: s.purpose(party, "SubscriptionService/Subscribe"),
                    },
                    "curious",
                ))
                .await;
            m.row(party, format!("Subscribe on {node}'s node"), outcome(r, "a stream"));
            let r = BreachServiceClient::new(channel.clone())
                .stream_breaches(request(
                    pb::StreamBreachesRequest {
                        resume_token: String::new(),
                        purpose: s.purpose(party, "BreachService/StreamBreaches"),
                    },
                    "curious",
                ))
                .await;
            m.row(
                party,
                format!("StreamBreaches on {node}'s node"),
                outcome(r, "a stream"),
            );
            let audit = AuditServiceClient::new(channel.clone());
            let purpose = s.purpose(party, "AuditService/Verify");
            let r = audit
                .clone()
                .verify(request(
                    pb::VerifyRequest {
                        from_sequence: 0,
                        to_sequence: 0,
                        purpose: purpose.clone(),
                    },
                    "curious",
                ))
                .await;
            m.row(
                party,
                format!("AuditService/Verify on {node}'s node"),
                outcome(r, "a report"),
            );
            let r = audit
                .clone()
                .replay(request(
                    pb::ReplayRequest {
                        from_sequence: 1,
                        to_sequence: 0,
                        purpose: purpose.clone(),
                    },
                    "curious",
                ))
                .await;
            m.row(
                party,
                format!("AuditService/Replay on {node}'s node"),
                outcome(r, "envelopes"),
            );
            let r = audit
                .clone()
                .access_log(request(
                    pb::AccessLogRequest {
                        case_id: case.clone(),
                        purpose,
                    },
                    "curious",
                ))
                .await;
            m.row(
                party,
                format!("AuditService/AccessLog on {node}'s node"),
                outcome(r, "access records"),
            );
        }
    }
}

/// Each node's own people recording what only the node's machinery may write, and events
/// larger than the broker takes.
async fn own_node_abuse(s: &Suite, m: &mut Matrix) {
    for party in NODES {
        let channel = s.channel(party, party).await;
        let forged = pb::EventDraft {
            case_id: s.case.to_string(),
            occurred_at: String::new(),
            event: Some(pb::event_draft::Event::AccessLogged(pb::AccessLogged {
                core: Some(pb::AccessCore {
                    party: "probation".into(),
                    person: "PO Mallory".into(),
                    method: "CaseService/GetCase".into(),
                    sections: vec!["identity".into()],
                    purpose: "offender-management".into(),
                    clause: "10.1".into(),
                    disclosed_to: String::new(),
                    case_ids: vec![s.case.0.as_bytes().to_vec()],
                }),
            })),
        };
        // At the case's current version, so only the event type can stop it.
        let version = CaseServiceClient::new(channel.clone())
            .get_case(request(
                pb::GetCaseRequest {
                    case_id: s.case.0.as_bytes().to_vec(),
                    purpose: s.purpose(party, "CaseService/GetCase"),
                },
                "mallory",
            ))
            .await
            .map_or(0, |r| r.into_inner().version);
        let r = CaseServiceClient::new(channel.clone())
            .record_event(request(
                pb::RecordEventRequest {
                    draft: Some(forged),
                    expected_version: version,
                    purpose: s.purpose(party, "CaseService/RecordEvent"),
                },
                "mallory",
            ))
            .await;
        m.row(
            party,
            "RecordEvent of an AccessLogged naming another party's person",
            outcome(r, "a forged access record in the log"),
        );
    }

    // A 2 MiB narrative: refused at the door naming the limit, and no access record claims it.
    let fresh = CaseId::random();
    let channel = s.channel("police-hru", "police-hru").await;
    let r = CaseServiceClient::new(channel.clone())
        .record_event(request(
            pb::RecordEventRequest {
                draft: Some(referral(fresh, "x".repeat(2 << 20))),
                expected_version: 0,
                purpose: "risk-management".into(),
            },
            "DS Morgan",
        ))
        .await;
    let code = r.as_ref().err().map(tonic::Status::code);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let claimed = AuditServiceClient::new(channel)
        .access_log(request(
            pb::AccessLogRequest {
                case_id: fresh.0.as_bytes().to_vec(),
                purpose: "accountability".into(),
            },
            "DS Morgan",
        ))
        .await
        .map(|a| {
            a.into_inner()
                .entries
                .iter()
                .filter(|e| e.access.as_ref().is_some_and(|a| a.method == "CaseService/RecordEvent"))
                .count()
        })
        .expect("police-hru reads its access log");
    let outcome = match (code, claimed) {
        (Some(tonic::Code::InvalidArgument | tonic::Code::ResourceExhausted), 0) => {
            Outcome::Refused(format!("{:?} at the door, nothing logged", code.unwrap()))
        }
        (None, _) => Outcome::Succeeded("stored".into()),
        (Some(c), n) => Outcome::Succeeded(format!(
            "answered {c:?} (a client retries), {n} access record(s) claim a write that never happened"
        )),
    };
    m.row("police-hru", "RecordEvent with a 2 MiB narrative", outcome);
}

/// Bytes no decoder accepts as any request here: tag 1 as a varint, tag 2 as fixed64.
#[derive(Clone, PartialEq, prost::Message)]
struct Malformed {
    #[prost(uint64, tag = "1")]
    one: u64,
    #[prost(fixed64, tag = "2")]
    two: u64,
}

/// Malformed protobuf: every node's unary methods called by its own party with bytes that
/// decode as no request, and undecodable bytes published as an envelope on the party's own
/// subject of the shared log.
async fn malformed(s: &Suite, m: &mut Matrix) {
    use tonic::codegen::http::uri::PathAndQuery;
    for node in NODES {
        for method in [
            "CaseService/RecordEvent",
            "CaseService/GetCase",
            "CaseService/ListCases",
            "BreachService/Acknowledge",
            "AuditService/AccessLog",
        ] {
            let mut grpc = tonic::client::Grpc::new(s.channel(node, node).await);
            grpc.ready().await.unwrap();
            let path = PathAndQuery::try_from(format!("/hru.v1.{method}")).unwrap();
            let r: Result<tonic::Response<pb::GetCaseResponse>, tonic::Status> = grpc
                .unary(
                    request(Malformed { one: u64::MAX, two: 7 }, "fuzz"),
                    path,
                    tonic_prost::ProstCodec::default(),
                )
                .await;
            m.row(
                node,
                format!("malformed protobuf to its own {method}"),
                outcome(r, "answered"),
            );
        }
    }
    let before = s.served("police-hru", s.case).await.len();
    let refused = || {
        metric(
            s.metrics_port("police-hru"),
            "hru_read_refused_total{reason=\"malformed\"}",
        )
    };
    let counted = refused();
    let subject = subject_for(s.case, &"police-hru".parse().unwrap(), EventType::ReferralReceived);
    let stored = s.publish("police-hru", subject.as_str(), b"\x0a\x02no".to_vec()).await;
    let mut seen = counted;
    for _ in 0..100 {
        seen = refused();
        if seen > counted {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = s.served("police-hru", s.case).await.len();
    m.row(
        "police-hru",
        "undecodable bytes published as an envelope on its own subject",
        match stored {
            Err(e) => Outcome::Refused(format!("broker: {e}")),
            Ok(_) if after == before && seen > counted => {
                Outcome::Refused("stored by the broker, never served by a node (counted as malformed)".into())
            }
            Ok(seq) => Outcome::Succeeded(format!(
                "stored at {seq}; served {before} → {after} events, malformed refusals {counted} → {seen}"
            )),
        },
    );
}

/// Push consumers: each party (and the auditor), with its own nkey, asks for a consumer on a
/// stream it reads that delivers onto another party's inbox, a victim device's alert subject
/// and a subject of the shared log. The provisioner listens on each target.
async fn push_consumers(s: &Suite, m: &mut Matrix) {
    use async_nats::jetstream::consumer::push;
    let secrets = |who: &str| s.secrets(who);
    let watcher = hru_broker::connect(&s.w.nats.url(), Some(&secrets("provisioner").broker_identity()))
        .await
        .unwrap();
    let everyone: Vec<&str> = CHESHIRE_PARTIES.iter().copied().chain(["auditor"]).collect();
    let mut attempts = Vec::new();
    for (i, party) in everyone.iter().enumerate() {
        let other = CHESHIRE_PARTIES[(i + 1) % CHESHIRE_PARTIES.len()];
        let other_id: PartyId = other.parse().unwrap();
        let stream = if *party == "auditor" {
            hru_broker::EVENTS_STREAM.to_owned()
        } else {
            hru_broker::view_stream(&party.parse().unwrap())
        };
        let targets = [
            (
                format!("{other}'s inbox"),
                format!("{}.push", hru_broker::Filter::inbox_prefix(other)),
            ),
            (
                "a victim device's alert subject".to_owned(),
                hru_broker::Subject::alert("victim-phone-1").to_string(),
            ),
            (
                format!("{other}'s subject of the shared log"),
                subject_for(s.case, &other_id, EventType::ReferralReceived).to_string(),
            ),
        ];
        let client = hru_broker::connect(&s.w.nats.url(), Some(&secrets(party).broker_identity()))
            .await
            .unwrap();
        let js = async_nats::jetstream::new(client);
        for (what, target) in targets {
            let (js, watcher, stream) = (js.clone(), watcher.clone(), stream.clone());
            attempts.push(async move {
                let attack = format!("push consumer on {stream} delivering onto {what}");
                let mut listener = watcher.subscribe(target.clone()).await.unwrap();
                watcher.flush().await.unwrap();
                let config = push::Config {
                    deliver_subject: target.clone(),
                    ..Default::default()
                };
                let created = tokio::time::timeout(Duration::from_secs(3), async {
                    let stream = js.get_stream(&stream).await.map_err(|e| e.to_string())?;
                    stream
                        .create_consumer(config)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                })
                .await
                .unwrap_or_else(|_| Err("no answer (refused by the broker)".into()));
                let outcome = match created {
                    Err(e) => Outcome::Refused(format!("broker: {e}")),
                    Ok(()) => {
                        let delivered = tokio::time::timeout(Duration::from_millis(1500), listener.next())
                            .await
                            .ok()
                            .flatten()
                            .is_some();
                        Outcome::Succeeded(if delivered {
                            format!("created; copies delivered onto {target}")
                        } else {
                            format!("created onto {target} (nothing to deliver yet)")
                        })
                    }
                };
                (*party, attack, outcome)
            });
        }
    }
    // All at once: a refusal is a request the server never answers.
    for (party, attack, outcome) in futures::future::join_all(attempts).await {
        m.row(party, attack, outcome);
    }
}

#[test]
fn no_party_gets_anything_the_agreement_does_not_give_it() {
    let w = World::secured("../policies/cheshire-hru.toml", &CHESHIRE_PARTIES);
    w.provision();
    for p in CHESHIRE_PARTIES {
        w.certificate(p);
    }
    let nodes: Vec<(NodeProcess, u16)> = NODES
        .iter()
        .map(|p| {
            let port = free_port();
            (w.start_node(p, &format!("metrics_listen = \"127.0.0.1:{port}\"")), port)
        })
        .collect();
    let directory = Directory::from_toml(
        &std::fs::read_to_string(w.dir.path().join("policies/directory.toml")).unwrap(),
        "directory.toml",
    )
    .unwrap();
    let text = std::fs::read_to_string(w.dir.path().join("policies/cheshire-hru.toml")).unwrap();
    let isa = CompiledIsa::compile(&text, "cheshire-hru.toml", Some(&directory)).unwrap();
    let s = Suite {
        w,
        isa,
        directory,
        nodes,
        case: CaseId::random(),
        planted: std::sync::Mutex::new(Vec::new()),
    };
    let rt = hru_tests::runtime();
    let mut m = Matrix::default();
    rt.block_on(async {
        // Honest work: police-hru's referral on the case, through its node.
        let police = s.channel("police-hru", "police-hru").await;
        CaseServiceClient::new(police.clone())
            .record_event(request(
                pb::RecordEventRequest {
                    draft: Some(referral(s.case, "followed her home twice".into())),
                    expected_version: 0,
                    purpose: "risk-management".into(),
                },
                "DS Morgan",
            ))
            .await
            .expect("an honest referral is recorded");
        // A genuine police envelope to re-publish: sealed and published by police itself.
        let police_id: PartyId = "police-hru".parse().unwrap();
        let readers = hru_envelope::AudiencePolicy::audience(&s.isa, &police_id, EventType::ReferralReceived, "core")
            .unwrap()
            .members()
            .clone();
        let core = pb::ReferralCore {
            subject_ref: vec![4; 32],
            behaviours: vec![pb::Behaviour::Stalking as i32],
            area: "Chester".into(),
            received_at_ms: jiff::Timestamp::now().as_millisecond(),
            out_of_hours: false,
            crime_reference: String::new(),
        };
        let genuine = s.forge(
            "police-hru",
            s.case,
            EventType::ReferralReceived,
            vec![PlainSection {
                name: "core",
                bytes: core.encode_to_vec(),
            }],
            &readers,
        );
        for e in &genuine {
            s.publish("police-hru", e.subject.as_str(), e.bytes.clone())
                .await
                .expect("police publishes its own referral");
        }
        for node in NODES.iter().filter(|n| readers.iter().any(|r| r.as_str() == **n)) {
            for _ in 0..100 {
                let served = s.served(node, s.case).await;
                if served
                    .iter()
                    .filter(|(p, t, _)| p == "police-hru" && t == "ReferralReceived")
                    .count()
                    >= 2
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }

        s.planted.lock().unwrap().clear();
        forgeries(&s, &mut m, &genuine).await;
        forged_access_records(&s, &mut m).await;
        floods(&s, &mut m).await;
        foreign_calls(&s, &mut m).await;
        own_node_abuse(&s, &mut m).await;
        push_consumers(&s, &mut m).await;
        malformed(&s, &mut m).await;

        // Honest callers are still answered.
        let served = s.served("police-hru", s.case).await;
        assert!(served.len() >= 2, "police still reads its case: {served:?}");
    });
    m.print();
    for node in NODES {
        println!(
            "{node}'s node: hru_read_refused_total{{reason=\"not-permitted\"}} {}, {{reason=\"subject-mismatch\"}} {}",
            metric(s.metrics_port(node), "hru_read_refused_total{reason=\"not-permitted\"}"),
            metric(
                s.metrics_port(node),
                "hru_read_refused_total{reason=\"subject-mismatch\"}"
            ),
        );
    }
    assert_eq!(
        m.successes(),
        0,
        "{} of {} attacks succeeded (matrix above)",
        m.successes(),
        m.rows.len()
    );
    // Every forged or re-published envelope a node's view sourced shows in its metrics.
    let refused: u64 = NODES
        .iter()
        .map(|n| metric(s.metrics_port(n), "hru_read_refused_total{reason=\"subject-mismatch\"}"))
        .sum();
    let planted = m
        .rows
        .iter()
        .filter(|(_, attack, o)| {
            (attack.starts_with("header says") || attack.contains("re-published"))
                && matches!(o, Outcome::Refused(how) if how.starts_with("stored by the broker"))
        })
        .count() as u64;
    assert!(
        refused >= planted,
        "{refused} refusals counted by the nodes for {planted} forged envelopes the broker stored"
    );

    // The offline audit names each forged envelope's kind.
    let auditor = s.w.keys().join("auditor.secret").display().to_string();
    let out =
        s.w.run(&["--identity", &auditor, "audit", "verify", "--format", "json"]);
    let mut kinds = std::collections::BTreeMap::<String, u64>::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if let Some(kind) = v.get("kind").and_then(|k| k.as_str()) {
            *kinds.entry(kind.to_owned()).or_default() += 1;
        }
    }
    println!("hru audit verify: findings by kind {kinds:?}");
    assert_eq!(out.status.code(), Some(1), "the audit reports findings");
    let named: u64 = [
        "subject-mismatch",
        "not-permitted",
        "unknown-agreement",
        "over-shared",
        "under-shared",
        "audience-mismatch",
        "malformed",
    ]
    .iter()
    .map(|k| kinds.get(*k).copied().unwrap_or(0))
    .sum();
    assert!(
        named > planted,
        "{named} audit findings name a forgery's kind for {planted} forged envelopes and one undecodable one"
    );

    // What police-hru's node folded equals a rebuild over the log without anything planted.
    let mut s = s;
    let at = s.nodes.iter().position(|(n, _)| n.party == "police-hru").unwrap();
    let (mut node, _) = s.nodes.remove(at);
    node.child.kill().unwrap();
    node.child.wait().unwrap();
    let store = s.w.dir.path().join("node-police-hru/projections");
    let keys = s.w.keys().display().to_string();
    let out = s.w.run(&[
        "--identity",
        &auditor,
        "project",
        "--party",
        "police-hru",
        "--keys",
        &keys,
        "--store",
        &store.display().to_string(),
    ]);
    assert!(
        out.status.success(),
        "project: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let folded: std::collections::BTreeMap<String, String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split('\t').collect();
            Some((
                fields.first()?.to_string(),
                fields.last()?.strip_prefix("digest ")?.to_owned(),
            ))
        })
        .collect();
    let planted: BTreeSet<u64> = s.planted.lock().unwrap().iter().copied().collect();
    let honest = rt.block_on(honest_rebuild(&s, &planted));
    println!(
        "police-hru's node: {folded:?}; rebuilt without the {} planted messages: {honest:?}",
        planted.len()
    );
    assert!(!folded.is_empty());
    assert_eq!(folded, honest, "the node folded exactly what the honest log gives");
}

/// police-hru's projections rebuilt in this process from the log without the `planted`
/// messages: name → digest.
async fn honest_rebuild(s: &Suite, planted: &BTreeSet<u64>) -> std::collections::BTreeMap<String, String> {
    use futures::TryStreamExt as _;
    use hru_log::SharedLog as _;
    let auditor = s.secrets("auditor");
    let log = hru_log::EventLog::open(&s.w.nats.url(), Some(&auditor.broker_identity()), 1)
        .await
        .unwrap();
    let entries: Vec<hru_log::LogEntry> = log
        .reader()
        .replay(1, &[])
        .await
        .unwrap()
        .try_filter(|e| std::future::ready(!planted.contains(&e.sequence)))
        .try_collect()
        .await
        .unwrap();
    let police = s.secrets("police-hru");
    let deployment = hru_runtime::Deployment::load(&s.w.dir.path().join("policies")).unwrap();
    let read = hru_reader::ReadPath::new(
        s.directory.clone(),
        std::sync::Arc::new(deployment.policies),
        hru_envelope::KeyRing::new(&police),
    );
    let role = s.isa.parties[&police.party].role;
    let projections = hru_node::View::projections(&hru_node::View::for_role(role), s.isa.hours.as_ref());
    let dir = tempfile::tempdir().unwrap();
    let store = hru_projection::Store::open(dir.path()).unwrap();
    let mut projector = hru_projection::Projector::new(store, projections, read).unwrap();
    for chunk in entries.chunks(256) {
        let items: Vec<hru_projection::LogItem<'_>> = chunk
            .iter()
            .map(|e| (e.sequence, e.subject.as_str(), e.payload.as_ref(), e.stored))
            .collect();
        projector.feed(&items).unwrap();
    }
    projector.store.flush().unwrap();
    projector
        .projections()
        .map(|p| (p.name().to_owned(), hex::encode(projector.store.digest(p).unwrap())))
        .collect()
}
