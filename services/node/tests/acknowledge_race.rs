//! Two control-room operators acknowledging the same breach at once, as soon as it shows on
//! the breach stream: for each of 100 breaches exactly one acknowledgement is logged, and the
//! other operator is refused with the name of the one who acknowledged first.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

mod common;

use common::{request, world};
use futures::{StreamExt as _, TryStreamExt as _};
use hru_domain::{CaseId, EventType};
use hru_log::SharedLog as _;
use hru_wire::v1 as pb;
use pb::breach_service_client::BreachServiceClient;

const ROUNDS: u128 = 100;

fn breach(n: u128) -> pb::event_draft::Event {
    let now = jiff::Timestamp::now().as_millisecond();
    pb::event_draft::Event::TagBreach(pb::TagBreach {
        core: Some(pb::BreachCore {
            breach_id: uuid::Uuid::from_u128(n).as_bytes().to_vec(),
            tag_id: "tag-7".into(),
            kind: pb::BreachKind::Exclusion as i32,
            state: pb::BreachState::Opened as i32,
            rule_id: uuid::Uuid::from_u128(1).as_bytes().to_vec(),
            opened_at_ms: now,
            observed_at_ms: now,
            position: None,
            accuracy_m: 5.0,
            distance_m: 0.0,
            late: false,
            evidence: None,
        }),
    })
}

fn acknowledgement(n: u128, operator: &str) -> tonic::Request<pb::AcknowledgeRequest> {
    request(
        pb::AcknowledgeRequest {
            breach_id: uuid::Uuid::from_u128(n).as_bytes().to_vec(),
            operator: operator.into(),
            action: format!("{operator} sent a unit"),
            purpose: "breach-response".into(),
        },
        operator,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_operators_acknowledge_each_breach_exactly_once() {
    let w = world().await;
    let control = w.node("police-control", "").await;
    let case = CaseId::random();
    let mut geofence = w.producer("geofence").await;
    let mut first = BreachServiceClient::new(w.channel(&control, Some("police-control")).await.unwrap());
    let mut second = BreachServiceClient::new(w.channel(&control, Some("police-control")).await.unwrap());
    // The operators watch the breach stream and both act on a breach once it shows.
    let mut board = first
        .stream_breaches(request(
            pb::StreamBreachesRequest {
                resume_token: String::new(),
                purpose: "breach-response".into(),
            },
            "PC 101",
        ))
        .await
        .unwrap()
        .into_inner();
    let mut won = 0;
    let mut refused_wrongly = Vec::new();
    for n in 1..=ROUNDS {
        w.record(&mut geofence, case, breach(n)).await;
        let shown = uuid::Uuid::from_u128(n).as_bytes().to_vec();
        loop {
            let update = board.next().await.unwrap().unwrap();
            if update.breach.is_some_and(|b| b.breach_id == shown) {
                break;
            }
        }
        let (a, b) = tokio::join!(
            first.acknowledge(acknowledgement(n, "PC 101")),
            second.acknowledge(acknowledgement(n, "PC 202"))
        );
        for (outcome, other) in [(a, "PC 202"), (b, "PC 101")] {
            match outcome {
                Ok(_) => won += 1,
                Err(s) => {
                    let named = s.message().contains(other);
                    let code = matches!(s.code(), tonic::Code::Aborted | tonic::Code::FailedPrecondition);
                    if !(named && code) {
                        refused_wrongly.push(format!("breach {n}: {:?} {}", s.code(), s.message()));
                    }
                }
            }
        }
    }
    let logged = w
        .log
        .reader()
        .replay(
            1,
            &[hru_broker::Filter::case_events_of_type(
                case,
                EventType::BreachAcknowledged,
            )],
        )
        .await
        .unwrap()
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .len();
    assert_eq!(
        (won, logged),
        (ROUNDS as usize, ROUNDS as usize),
        "{ROUNDS} breaches, each acknowledged by two operators at once: one acknowledgement each; refusals not naming the first: {refused_wrongly:#?}"
    );
    assert!(refused_wrongly.is_empty(), "{refused_wrongly:#?}");
    control.stop().await;
}
