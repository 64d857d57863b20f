//! A police-hru node on a real nats-server: mutual TLS, the caller's party from its
//! certificate, answers from projections, refusals naming the ISA rule, and exactly one
//! AccessLogged event per call, written before the answer.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

mod common;

use std::time::Duration;

use common::{World, request, world};
use hru_domain::CaseId;
use hru_wire::v1 as pb;
use hru_wire::v1::case_service_client::CaseServiceClient;
use tonic::transport::Channel;

async fn case_client(
    w: &World,
    node: &common::Node,
    party: Option<&str>,
) -> Result<CaseServiceClient<Channel>, tonic::transport::Error> {
    w.channel(node, party).await.map(CaseServiceClient::new)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_answers_its_parties_and_logs_every_access() {
    let w = world().await;
    let node = w.node("police-hru", "").await;
    // police-hru records a stalking referral through the log (as another of its instances).
    let mut producer = w.producer("police-hru").await;
    let case = CaseId::random();
    let pb::event_draft::Event::ReferralReceived(mut referral) = common::referral(3) else {
        unreachable!()
    };
    referral.identity = None;
    referral.narrative = None;
    w.record(&mut producer, case, pb::event_draft::Event::ReferralReceived(referral))
        .await;

    // The node folds it within a second.
    let mut police_client = case_client(&w, &node, Some("police-hru"))
        .await
        .expect("the node serves with TLS");
    let mut rows = Vec::new();
    let mut list_calls = 0;
    for _ in 0..20 {
        list_calls += 1;
        rows = police_client
            .list_cases(request(
                pb::ListCasesRequest {
                    view: "screening-queue".into(),
                    purpose: "risk-management".into(),
                },
                "PC 1234",
            ))
            .await
            .expect("police may list its screening queue")
            .into_inner()
            .rows;
        if !rows.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(rows.len(), 1, "the referral is on the screening queue");
    assert_eq!(rows[0].case_id, case.0.as_bytes().to_vec());

    let got = police_client
        .get_case(request(
            pb::GetCaseRequest {
                case_id: case.0.as_bytes().to_vec(),
                purpose: "risk-management".into(),
            },
            "PC 1234",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.events.len(), 1);
    assert!(
        got.events[0]
            .sections
            .iter()
            .any(|s| s.name == "core" && s.refusal.is_empty())
    );

    // A command on a stale version is refused with ABORTED and the current version.
    let screening = pb::EventDraft {
        case_id: case.to_string(),
        occurred_at: String::new(),
        event: Some(pb::event_draft::Event::ScreeningCompleted(pb::ScreeningCompleted {
            core: Some(pb::ScreeningCore {
                primacy_taken: true,
                criteria: vec!["FOUR".into()],
                rationale: "fixated, repeated".into(),
            }),
            figures: None,
        })),
    };
    let stale = police_client
        .record_event(request(
            pb::RecordEventRequest {
                draft: Some(screening.clone()),
                expected_version: 0,
                purpose: "risk-management".into(),
            },
            "PC 1234",
        ))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), tonic::Code::Aborted, "{}", stale.message());
    assert!(
        stale.message().contains(&format!("version {}", got.version)),
        "{}",
        stale.message()
    );
    let recorded = police_client
        .record_event(request(
            pb::RecordEventRequest {
                draft: Some(screening),
                expected_version: got.version,
                purpose: "risk-management".into(),
            },
            "PC 1234",
        ))
        .await
        .expect("recorded on the current version")
        .into_inner();
    assert!(recorded.sequence > got.version);

    // Refusals: a bad field, a call the agreement does not allow, a missing person.
    let err = police_client
        .get_case(request(
            pb::GetCaseRequest {
                case_id: vec![1, 2],
                purpose: "risk-management".into(),
            },
            "PC 1234",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("case_id"), "{}", err.message());
    let mut vendor = case_client(&w, &node, Some("em-vendor")).await.unwrap();
    let err = vendor
        .list_cases(request(
            pb::ListCasesRequest {
                view: "case-board".into(),
                purpose: "monitoring".into(),
            },
            "ops",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert!(
        err.message()
            .contains("no [[call]] rule letting em-vendor call CaseService/ListCases"),
        "{}",
        err.message()
    );
    let err = police_client
        .list_cases(tonic::Request::new(pb::ListCasesRequest {
            view: "case-board".into(),
            purpose: "risk-management".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    // A zone whose geometry the geofence could not use is refused at the door, naming the field.
    let zone = pb::EventDraft {
        case_id: case.to_string(),
        occurred_at: String::new(),
        event: Some(pb::event_draft::Event::ZoneDefined(pb::ZoneDefined {
            core: Some(pb::ZoneCore {
                zone_id: vec![5; 16],
                version: 1,
                kind: pb::ZoneKind::Exclusion as i32,
                tag_id: "tag-1".into(),
                geojson: r#"{"type":"LineString","coordinates":[[-2.9,53.2],[-2.8,53.2]]}"#.into(),
                radius_m: 0.0,
                schedule: vec![],
                exit_buffer_m: 10.0,
                label: "home".into(),
            }),
        })),
    };
    let err = police_client
        .record_event(request(
            pb::RecordEventRequest {
                draft: Some(zone),
                expected_version: 0,
                purpose: "risk-management".into(),
            },
            "PC 1234",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("ZoneDefined.core.geojson"), "{}", err.message());

    // No client certificate: no connection.
    let anonymous = case_client(&w, &node, None).await;
    let refused = match anonymous {
        Err(_) => true,
        Ok(mut c) => c
            .list_cases(request(
                pb::ListCasesRequest {
                    view: "case-board".into(),
                    purpose: "risk-management".into(),
                },
                "x",
            ))
            .await
            .is_err(),
    };
    assert!(refused, "a caller without a certificate is refused");

    // Exactly one AccessLogged per answered call (each list, the get, the record that landed),
    // naming person and clause; refused calls (the stale record included: it is decided on the
    // case before anything is written) disclose nothing and log nothing.
    let logged = w.access_logged().await;
    assert_eq!(
        logged.len(),
        list_calls + 2,
        "lists, the get and the record that landed: {logged:?}"
    );
    assert!(
        logged[..list_calls]
            .iter()
            .all(|l| l.method == "CaseService/ListCases" && l.person == "PC 1234")
    );
    assert_eq!(
        logged[list_calls - 1].case_ids,
        vec![case.0.as_bytes().to_vec()],
        "the answer's cases are logged"
    );
    let get = &logged[list_calls];
    assert_eq!(get.method, "CaseService/GetCase");
    assert_eq!((get.clause.as_str(), get.purpose.as_str()), ("10.1", "risk-management"));
    // Prometheus metrics: calls by method and outcome, events folded, lag.
    let metrics = {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", node.metrics_port))
            .await
            .unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).await.unwrap();
        text
    };
    assert!(metrics.starts_with("HTTP/1.1 200 OK"), "{metrics}");
    assert!(
        metrics.contains(&format!(
            "hru_node_requests_total{{method=\"CaseService/ListCases\",code=\"Ok\"}} {list_calls}"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains("hru_node_requests_total{method=\"CaseService/RecordEvent\",code=\"Aborted\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("hru_node_request_seconds_count{method=\"CaseService/GetCase\"}"),
        "{metrics}"
    );
    assert!(!metrics.contains("hru_node_events_folded_total 0\n"), "{metrics}");
    node.stop().await;
}
