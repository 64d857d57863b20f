//! Every RPC of every service in the descriptor set leaves exactly one AccessLogged event per
//! answered call (DPA 2018 s62), naming the method, the person and the clause; a stream leaves,
//! besides, records naming every case it sent once it has sent them. A new RPC without a case
//! here fails the test.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

mod common;

use common::{request, world};
use futures::StreamExt as _;
use hru_domain::CaseId;
use hru_log::SharedLog as _;
use hru_wire::v1 as pb;
use pb::audit_service_client::AuditServiceClient;
use pb::breach_service_client::BreachServiceClient;
use pb::case_service_client::CaseServiceClient;
use pb::partner_service_client::PartnerServiceClient;
use pb::subscription_service_client::SubscriptionServiceClient;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_leaves_exactly_one_access_record() {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let w = world().await;
    let police = w.node("police-hru", "").await;
    // police-hru's period keys are published before police-control's node starts, so that the
    // control room's grants to police-hru are wrapped to them (as in a deployment whose nodes
    // have run a while), not to its long-term key.
    let published = hru_broker::Subject::control(
        &"police-hru".parse().unwrap(),
        hru_domain::EventType::PeriodKeysPublished,
    );
    w.wait_in_view("police-control", &hru_broker::Filter::exactly(&published))
        .await;
    let control = w.node("police-control", "").await;

    // A case with a referral and an open breach.
    let case = CaseId::random();
    let mut desk = w.producer("police-hru").await;
    w.record(&mut desk, case, common::referral(1)).await;
    let mut geofence = w.producer("geofence").await;
    let breach_id = uuid::Uuid::now_v7();
    let now = jiff::Timestamp::now().as_millisecond();
    let breach = pb::event_draft::Event::TagBreach(pb::TagBreach {
        core: Some(pb::BreachCore {
            breach_id: breach_id.as_bytes().to_vec(),
            tag_id: "tag-1".into(),
            kind: pb::BreachKind::Exclusion as i32,
            state: pb::BreachState::Opened as i32,
            rule_id: uuid::Uuid::now_v7().as_bytes().to_vec(),
            opened_at_ms: now,
            observed_at_ms: now,
            position: Some(pb::LatLon { lat: 53.19, lon: -2.89 }),
            accuracy_m: 6.0,
            distance_m: 20.0,
            late: false,
            evidence: None,
        }),
    });
    let head = w.record(&mut geofence, case, breach).await;

    let police_channel = w.channel(&police, Some("police-hru")).await.unwrap();
    let control_channel = w.channel(&control, Some("police-control")).await.unwrap();
    let bytes = case.0.as_bytes().to_vec();
    let person = "DS Morgan";

    // Wait until both nodes have folded the breach.
    let mut subscription = SubscriptionServiceClient::new(police_channel.clone());
    for _ in 0..100 {
        let board = CaseServiceClient::new(control_channel.clone())
            .get_case(request(
                pb::GetCaseRequest {
                    case_id: bytes.clone(),
                    purpose: "breach-response".into(),
                },
                "warm-up",
            ))
            .await;
        if board.is_ok_and(|r| r.get_ref().events.iter().any(|e| e.sequence == head)) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // The warm-up's access records, written by the control room's node, reach police's view.
    w.wait_in_view(
        "police-hru",
        &hru_broker::Filter::exactly(&hru_broker::Subject::access(case, &"police-control".parse().unwrap())),
    )
    .await;

    let pool = hru_wire::descriptor_pool();
    let mut methods: Vec<String> = pool
        .services()
        .filter(|s| s.package_name() == "hru.v1")
        .flat_map(|s| {
            let service = s.name().to_owned();
            s.methods()
                .map(move |m| format!("{service}/{}", m.name()))
                .collect::<Vec<_>>()
        })
        .collect();
    methods.sort();
    assert_eq!(methods.len(), 10, "{methods:?}");

    let mut matrix = Vec::new();
    for method in &methods {
        let before = w.access_logged().await.len();
        match method.as_str() {
            "CaseService/RecordEvent" => {
                let draft = pb::EventDraft {
                    case_id: case.to_string(),
                    occurred_at: String::new(),
                    event: Some(pb::event_draft::Event::ScreeningCompleted(pb::ScreeningCompleted {
                        core: Some(pb::ScreeningCore {
                            primacy_taken: true,
                            criteria: vec!["FOUR".into()],
                            rationale: "fixated".into(),
                        }),
                        figures: None,
                    })),
                };
                let version = w.log.reader().case_version(case).await.unwrap();
                CaseServiceClient::new(police_channel.clone())
                    .record_event(request(
                        pb::RecordEventRequest {
                            draft: Some(draft),
                            expected_version: version,
                            purpose: "risk-management".into(),
                        },
                        person,
                    ))
                    .await
                    .unwrap();
            }
            "CaseService/GetCase" => {
                CaseServiceClient::new(police_channel.clone())
                    .get_case(request(
                        pb::GetCaseRequest {
                            case_id: bytes.clone(),
                            purpose: "risk-management".into(),
                        },
                        person,
                    ))
                    .await
                    .unwrap();
            }
            "CaseService/ListCases" => {
                CaseServiceClient::new(police_channel.clone())
                    .list_cases(request(
                        pb::ListCasesRequest {
                            view: "case-board".into(),
                            purpose: "risk-management".into(),
                        },
                        person,
                    ))
                    .await
                    .unwrap();
            }
            "PartnerService/RequestDisclosure" => {
                let answer = PartnerServiceClient::new(police_channel.clone())
                    .request_disclosure(request(
                        pb::RequestDisclosureRequest {
                            case_id: bytes.clone(),
                            purpose: "risk-management".into(),
                            sections: vec!["core".into()],
                            partner: String::new(),
                        },
                        person,
                    ))
                    .await
                    .unwrap()
                    .into_inner();
                hru_node::partner::verify_disclosure(&answer, &w.directory).unwrap();
            }
            "SubscriptionService/Subscribe" => {
                let mut stream = subscription
                    .subscribe(request(
                        pb::SubscribeRequest {
                            case_id: bytes.clone(),
                            event_types: vec![],
                            from_sequence: 0,
                            purpose: "risk-management".into(),
                        },
                        person,
                    ))
                    .await
                    .unwrap()
                    .into_inner();
                stream.next().await.unwrap().unwrap();
            }
            "BreachService/StreamBreaches" => {
                let mut stream = BreachServiceClient::new(police_channel.clone())
                    .stream_breaches(request(
                        pb::StreamBreachesRequest {
                            resume_token: String::new(),
                            purpose: "risk-management".into(),
                        },
                        person,
                    ))
                    .await
                    .unwrap()
                    .into_inner();
                // The geofence's state comes first (this world runs none: silent), then the breach.
                let mut first = stream.next().await.unwrap().unwrap();
                if first.geofence.is_some() {
                    assert!(first.geofence.unwrap().silent, "no geofence here");
                    first = stream.next().await.unwrap().unwrap();
                }
                assert_eq!(first.breach.unwrap().breach_id, breach_id.as_bytes().to_vec());
            }
            "BreachService/Acknowledge" => {
                let ack = BreachServiceClient::new(control_channel.clone())
                    .acknowledge(request(
                        pb::AcknowledgeRequest {
                            breach_id: breach_id.as_bytes().to_vec(),
                            operator: "PC 101".into(),
                            action: "unit dispatched".into(),
                            purpose: "breach-response".into(),
                        },
                        "PC 101",
                    ))
                    .await
                    .unwrap()
                    .into_inner();
                assert!(ack.response_time_ms >= 0);
            }
            "AuditService/Verify" => {
                let report = AuditServiceClient::new(police_channel.clone())
                    .verify(request(
                        pb::VerifyRequest {
                            from_sequence: 0,
                            to_sequence: 0,
                            purpose: "accountability".into(),
                        },
                        person,
                    ))
                    .await
                    .unwrap()
                    .into_inner();
                assert!(report.findings.is_empty(), "{:?}", report.findings);
            }
            "AuditService/Replay" => {
                let mut stream = AuditServiceClient::new(police_channel.clone())
                    .replay(request(
                        pb::ReplayRequest {
                            from_sequence: 1,
                            to_sequence: 0,
                            purpose: "accountability".into(),
                        },
                        person,
                    ))
                    .await
                    .unwrap()
                    .into_inner();
                assert_eq!(stream.next().await.unwrap().unwrap().sequence, 1);
            }
            "AuditService/AccessLog" => {
                let log = AuditServiceClient::new(police_channel.clone())
                    .access_log(request(
                        pb::AccessLogRequest {
                            case_id: bytes.clone(),
                            purpose: "accountability".into(),
                        },
                        person,
                    ))
                    .await
                    .unwrap()
                    .into_inner();
                assert!(!log.entries.is_empty(), "{log:?}");
            }
            other => panic!("{other} has no coverage case: add one that calls it"),
        }
        let streamed = method.ends_with("/Subscribe") || method.ends_with("/StreamBreaches");
        let mut after = w.access_logged().await;
        if streamed {
            // The stream has ended (its client dropped): its record of the cases it sent follows.
            for _ in 0..100 {
                let named = after[before..]
                    .iter()
                    .filter(|a| &a.method == method && a.case_ids.contains(&bytes))
                    .count();
                if named >= 2 || (named == 1 && after[before..].len() > 1) {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                after = w.access_logged().await;
            }
        }
        let new: Vec<&pb::AccessCore> = after[before..].iter().collect();
        assert!(new.iter().all(|a| &a.method == method), "{method}: {new:?}");
        if streamed {
            assert!(
                new.iter().any(|a| a.case_ids.contains(&bytes)),
                "{method}: a stream's records name the case it sent: {new:?}"
            );
        } else {
            assert_eq!(new.len(), 1, "{method}: {new:?}");
        }
        assert!(!new[0].clause.is_empty() && !new[0].purpose.is_empty());
        matrix.push(format!(
            "{method:36} → 1 AccessLogged ({} / clause {})",
            new[0].person, new[0].clause
        ));
    }
    println!("{}", matrix.join("\n"));
    police.stop().await;
    control.stop().await;
}
