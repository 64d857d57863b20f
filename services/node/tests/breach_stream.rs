//! `BreachService.StreamBreaches` resumes after a disconnect with no gap and no duplicate, sends
//! heartbeats while idle, and refuses a token it never issued.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

mod common;

use std::time::Duration;

use common::{request, world};
use futures::StreamExt as _;
use hru_domain::CaseId;
use hru_wire::v1 as pb;
use pb::breach_service_client::BreachServiceClient;

fn breach(n: u128) -> pb::event_draft::Event {
    let now = jiff::Timestamp::now().as_millisecond();
    pb::event_draft::Event::TagBreach(pb::TagBreach {
        core: Some(pb::BreachCore {
            breach_id: uuid::Uuid::from_u128(n).as_bytes().to_vec(),
            tag_id: "tag-9".into(),
            kind: pb::BreachKind::Curfew as i32,
            state: pb::BreachState::Opened as i32,
            rule_id: uuid::Uuid::from_u128(1).as_bytes().to_vec(),
            opened_at_ms: now,
            observed_at_ms: now,
            position: None,
            accuracy_m: 5.0,
            distance_m: 40.0,
            late: false,
            evidence: None,
        }),
    })
}

fn stream_request(token: &str) -> tonic::Request<pb::StreamBreachesRequest> {
    request(
        pb::StreamBreachesRequest {
            resume_token: token.to_owned(),
            purpose: "breach-response".into(),
        },
        "PC 101",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_breach_stream_has_no_gap_and_no_duplicate() {
    let w = world().await;
    let control = w.node("police-control", "").await;
    let case = CaseId::random();
    let mut geofence = w.producer("geofence").await;
    for n in 1..=10 {
        w.record(&mut geofence, case, breach(n)).await;
    }
    let channel = w.channel(&control, Some("police-control")).await.unwrap();
    let mut client = BreachServiceClient::new(channel.clone());

    // Read four, then drop the connection.
    let mut seen = Vec::new();
    let mut token = String::new();
    {
        let mut stream = client.stream_breaches(stream_request("")).await.unwrap().into_inner();
        while seen.len() < 4 {
            let m = tokio::time::timeout(Duration::from_secs(10), stream.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            token = m.resume_token.clone();
            if let Some(b) = m.breach {
                seen.push(uuid::Uuid::from_slice(&b.breach_id).unwrap().as_u128());
            }
        }
    }
    // More breaches while the control room is away.
    for n in 11..=15 {
        w.record(&mut geofence, case, breach(n)).await;
    }
    let mut stream = BreachServiceClient::new(channel)
        .stream_breaches(stream_request(&token))
        .await
        .unwrap()
        .into_inner();
    let mut heartbeat = None;
    while heartbeat.is_none() {
        let m = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        match m.breach {
            Some(b) => seen.push(uuid::Uuid::from_slice(&b.breach_id).unwrap().as_u128()),
            // A stream opens with the geofence's state (this world runs none: silent).
            None if m.geofence.is_some() => assert!(!m.heartbeat, "a state is not a heartbeat"),
            None => {
                assert!(m.heartbeat, "a message without a breach or state is a heartbeat");
                heartbeat = Some(m.resume_token);
            }
        }
    }
    assert_eq!(seen, (1..=15).collect::<Vec<_>>(), "in order, each once");

    // Resuming from the heartbeat's token gives nothing old.
    let mut after = client
        .stream_breaches(stream_request(&heartbeat.unwrap()))
        .await
        .unwrap()
        .into_inner();
    w.record(&mut geofence, case, breach(16)).await;
    let next = loop {
        let m = tokio::time::timeout(Duration::from_secs(10), after.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Some(b) = m.breach {
            break uuid::Uuid::from_slice(&b.breach_id).unwrap().as_u128();
        }
    };
    assert_eq!(next, 16);

    let refused = client.stream_breaches(stream_request("not-a-token")).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("resume_token"), "{}", refused.message());
    control.stop().await;
}
