//! Four party nodes (police-hru, probation, cwp, victim-advocacy) as `hru node run` child
//! processes on one real nats-server. A referral recorded at police reaches every node within a
//! second with exactly the sections the agreement gives that party; each role's projection
//! shows it; probation's request for identity fields is refused naming the missing rule; a
//! disclosure probation may have is signed by police and logged on both sides.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use hru_domain::{EventType, PartyId};
use hru_tests::{World, request};
use hru_wire::v1 as pb;
use pb::case_service_client::CaseServiceClient;
use pb::partner_service_client::PartnerServiceClient;
use pb::subscription_service_client::SubscriptionServiceClient;

const NODES: [(&str, &str); 4] = [
    ("police-hru", "risk-management"),
    ("probation", "offender-management"),
    ("cwp", "clinical-care"),
    ("victim-advocacy", "victim-safety"),
];

fn referral(case: &str, subject: u8, with_identity: bool) -> pb::EventDraft {
    pb::EventDraft {
        case_id: case.to_owned(),
        occurred_at: String::new(),
        event: Some(pb::event_draft::Event::ReferralReceived(pb::ReferralReceived {
            core: Some(pb::ReferralCore {
                subject_ref: vec![subject; 32],
                behaviours: vec![pb::Behaviour::Stalking as i32],
                area: "Macclesfield".into(),
                received_at_ms: jiff::Timestamp::now().as_millisecond(),
                out_of_hours: false,
                crime_reference: String::new(),
            }),
            identity: with_identity.then(|| pb::ReferralIdentity {
                subject: Some(pb::PersonIdentity {
                    full_name: "Sam Subject".into(),
                    date_of_birth: "1979-05-06".into(),
                    ..Default::default()
                }),
                victim: Some(pb::PersonIdentity {
                    full_name: "Vic Tim".into(),
                    ..Default::default()
                }),
            }),
            narrative: Some(pb::ReferralNarrative {
                text: "Follows the victim to work; repeated calls.".into(),
            }),
        })),
    }
}

#[test]
fn a_referral_reaches_four_nodes_with_exactly_what_each_may_see() {
    let world = World::new("../policies/cheshire-hru.toml", &hru_tests::CHESHIRE_PARTIES);
    let police = world.start_node("police-hru", "");
    let partners = format!(
        "[partners]\npolice-hru = \"https://localhost:{}\"\n[delivery_units]\nNorth = [\"Warrington\", \"Halton\"]\n\
         East = [\"Cheshire East\", \"Macclesfield\", \"Crewe\"]\nWest = [\"Cheshire West and Chester\", \"Chester\"]\n",
        police.port
    );
    let nodes = [
        world.start_node("probation", &partners),
        world.start_node("cwp", ""),
        world.start_node("victim-advocacy", ""),
    ];
    let isa = {
        let text = std::fs::read_to_string(world.dir.path().join("policies/cheshire-hru.toml")).unwrap();
        let dir_text = std::fs::read_to_string(world.dir.path().join("policies/directory.toml")).unwrap();
        let directory = hru_envelope::Directory::from_toml(&dir_text, "directory.toml").unwrap();
        (
            hru_policy::CompiledIsa::compile(&text, "cheshire-hru.toml", Some(&directory)).unwrap(),
            directory,
        )
    };
    let (isa, directory) = isa;
    let rt = hru_tests::runtime();
    let case = rt.block_on(async {
        let by_party = |p: &str| {
            std::iter::once(&police)
                .chain(nodes.iter())
                .find(|n| n.party == p)
                .unwrap()
        };
        let mut channels = Vec::new();
        for (party, purpose) in NODES {
            channels.push((party, purpose, world.channel(by_party(party), party).await));
        }
        let channel = |p: &str| channels.iter().find(|(q, ..)| *q == p).unwrap().2.clone();

        // Probation supervises subject 9 (its own referral), so police's case for the same
        // subject belongs on probation's caseload.
        let own_case = hru_domain::CaseId::random().to_string();
        CaseServiceClient::new(channel("probation"))
            .record_event(request(
                pb::RecordEventRequest {
                    draft: Some(referral(&own_case, 9, true)),
                    expected_version: 0,
                    purpose: "offender-management".into(),
                },
                "PO Singh",
            ))
            .await
            .expect("probation records its own referral");

        // Every node subscribes from now on.
        let mut streams = Vec::new();
        for (party, purpose, ch) in &channels {
            let stream = SubscriptionServiceClient::new(ch.clone())
                .subscribe(request(
                    pb::SubscribeRequest {
                        case_id: Vec::new(),
                        event_types: vec!["ReferralReceived".into()],
                        from_sequence: 0,
                        purpose: (*purpose).into(),
                    },
                    "duty officer",
                ))
                .await
                .unwrap_or_else(|e| panic!("{party} subscribes: {e}"))
                .into_inner();
            streams.push((*party, stream));
        }

        let case = hru_domain::CaseId::random();
        let recorded_at = Instant::now();
        CaseServiceClient::new(channel("police-hru"))
            .record_event(request(
                pb::RecordEventRequest {
                    draft: Some(referral(&case.to_string(), 9, true)),
                    expected_version: 0,
                    purpose: "risk-management".into(),
                },
                "DS Morgan",
            ))
            .await
            .expect("police records the referral");

        let police_id: PartyId = "police-hru".parse().unwrap();
        for (party, stream) in &mut streams {
            let event = loop {
                let next = tokio::time::timeout(Duration::from_secs(10), stream.next())
                    .await
                    .unwrap_or_else(|_| panic!("{party} never sees the referral"))
                    .unwrap()
                    .unwrap()
                    .event
                    .unwrap();
                if next.header.as_ref().unwrap().case_id == case.0.as_bytes().to_vec() {
                    break next;
                }
            };
            let took = recorded_at.elapsed();
            let readable: BTreeSet<&str> = event
                .sections
                .iter()
                .filter(|s| s.refusal.is_empty())
                .map(|s| s.name.as_str())
                .collect();
            let allowed: BTreeSet<&str> = EventType::ReferralReceived
                .sections()
                .iter()
                .copied()
                .filter(|s| {
                    isa.may_receive(&party.parse().unwrap(), &police_id, EventType::ReferralReceived, s)
                        .is_ok()
                })
                .collect();
            let expected: BTreeSet<&str> = match *party {
                "police-hru" | "victim-advocacy" => ["core", "identity", "narrative"].into(),
                "cwp" => ["core", "narrative"].into(),
                _ => ["core"].into(),
            };
            assert_eq!(allowed, expected, "{party}: the agreement's share rules");
            assert_eq!(readable, expected, "{party} reads exactly what it may");
            println!("{party:16} sees {readable:?} after {} ms", took.as_millis());
            assert!(took < Duration::from_secs(1), "{party} saw it after {took:?}");
        }

        // Each role's projection holds the case.
        let list = |party: &'static str, view: &'static str| {
            let ch = channel(party);
            let purpose = NODES.iter().find(|(p, _)| *p == party).unwrap().1;
            async move {
                CaseServiceClient::new(ch)
                    .list_cases(request(
                        pb::ListCasesRequest {
                            view: view.into(),
                            purpose: purpose.into(),
                        },
                        "analyst",
                    ))
                    .await
                    .unwrap()
                    .into_inner()
                    .rows
            }
        };
        let mine = |rows: Vec<pb::CaseRow>| rows.into_iter().find(|r| r.case_id == case.0.as_bytes().to_vec());
        let board = mine(list("police-hru", "case-board").await).expect("on the police case board");
        assert!(board.json.contains("Macclesfield"), "{}", board.json);
        let advocacy = mine(list("victim-advocacy", "advocacy").await).expect("on the advocacy list");
        assert!(advocacy.json.contains("Vic Tim"), "{}", advocacy.json);
        let caseload = mine(list("probation", "probation-caseload").await).expect("on probation's caseload");
        assert!(!caseload.json.contains("Sam Subject"), "{}", caseload.json);
        assert!(
            caseload.json.contains(r#""delivery_unit":"East""#),
            "a Macclesfield referral is the East delivery unit's: {}",
            caseload.json
        );

        // Probation asks police for identity fields: refused, naming no producer, event or section
        // of the case it was not shown.
        let refused = PartnerServiceClient::new(channel("probation"))
            .request_disclosure(request(
                pb::RequestDisclosureRequest {
                    case_id: case.0.as_bytes().to_vec(),
                    purpose: "offender-management".into(),
                    sections: vec!["identity".into()],
                    partner: "police-hru".into(),
                },
                "PO Singh",
            ))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{}", refused.message());
        assert!(
            refused
                .message()
                .contains("gives probation none of the sections asked for (identity) of this case's events")
                && !refused.message().contains("ReferralReceived"),
            "{}",
            refused.message()
        );

        // What probation may have comes back signed by police and is logged on both sides.
        let answer = PartnerServiceClient::new(channel("probation"))
            .request_disclosure(request(
                pb::RequestDisclosureRequest {
                    case_id: case.0.as_bytes().to_vec(),
                    purpose: "offender-management".into(),
                    sections: vec!["core".into()],
                    partner: "police-hru".into(),
                },
                "PO Singh",
            ))
            .await
            .expect("probation may have the referral's core")
            .into_inner();
        let disclosure = hru_node::partner::verify_disclosure(&answer, &directory).unwrap();
        assert_eq!(
            (disclosure.disclosed_by.as_str(), disclosure.disclosed_to.as_str()),
            ("police-hru", "probation")
        );
        assert!(
            disclosure
                .events
                .iter()
                .all(|e| e.sections.iter().all(|s| s.name == "core"))
        );
        case
    });
    drop(nodes);
    drop(police);

    // `hru audit access` (as police-hru, the DPO's party) shows the disclosure from both sides.
    let out = world.run(&[
        "audit",
        "access",
        "--case",
        &case.to_string(),
        "--keys",
        &world.keys().display().to_string(),
        "--format",
        "json",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let records: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let disclosures: Vec<&str> = records
        .iter()
        .filter(|r| r["method"] == "PartnerService/RequestDisclosure" && r["disclosed_to"] == "probation")
        .map(|r| r["logged_by"].as_str().unwrap())
        .collect();
    assert_eq!(disclosures.len(), 2, "{text}");
    assert!(disclosures.iter().any(|l| l.starts_with("police-hru/")), "{text}");
    assert!(disclosures.iter().any(|l| l.starts_with("probation/")), "{text}");
}
