//! Two producers of one party appending the same decision (two geofence instances across a
//! handover both decide a breach, under the event id the decision derives): the broker keeps
//! the first, and the second producer's chain must not count an envelope the log never stored.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use futures::TryStreamExt as _;
use hru_domain::{CaseId, EventId, EventType, PlainSection, ProducerId};
use hru_envelope::fixture::Cast;
use hru_envelope::{ChainChecker, StaticAudiences, verify};
use hru_log::SharedLog as _;
use hru_log::{EventLog, Expect, Producer};
use hru_testkit::NatsServer;

fn section(text: &str) -> Vec<PlainSection> {
    vec![PlainSection {
        name: "core",
        bytes: text.as_bytes().to_vec(),
    }]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_appended_by_two_producers_leaves_both_chains_intact() {
    let server = NatsServer::start().unwrap();
    let log = EventLog::connect(&server.url()).await.unwrap();
    let cast = Cast::new(62);
    let policy = StaticAudiences::new("shared-decision", 1).share(
        EventType::ReferralReceived,
        "core",
        std::slice::from_ref(&cast.police.party),
    );
    let store = tempfile::tempdir().unwrap();
    let mut producers = Vec::new();
    for instance in ["geofence-a", "geofence-b"] {
        let id = ProducerId {
            party: cast.police.party.clone(),
            instance: instance.into(),
        };
        producers.push(
            Producer::open(
                &store.path().join(instance),
                id,
                cast.police.signing.clone(),
                &log,
                &cast.directory,
            )
            .await
            .unwrap(),
        );
    }
    let case = CaseId::random();
    let now = 1_795_000_000_000;
    let mut rng = rand_core::OsRng;
    let decision = EventId::derived_v7(now, b"breach-1");
    let mut stored = Vec::new();
    for producer in &mut producers {
        let batch = producer
            .sealer()
            .prepare_event_with_id(
                Some(decision),
                case,
                EventType::ReferralReceived,
                section("the decision"),
                now,
                now,
                &policy,
                &cast.directory,
                &mut rng,
            )
            .unwrap();
        let acked = producer.append(&log, &batch, Expect::Any).await.unwrap();
        stored.push(*acked.last().unwrap());
    }
    assert_eq!(stored[0], stored[1], "the broker keeps the decision once");
    // Each producer goes on appending.
    for (i, producer) in producers.iter_mut().enumerate() {
        let batch = producer
            .sealer()
            .prepare_event(
                case,
                EventType::ReferralReceived,
                section(&format!("after, by {i}")),
                now,
                now,
                &policy,
                &cast.directory,
                &mut rng,
            )
            .unwrap();
        producer.append(&log, &batch, Expect::Any).await.unwrap();
    }
    let entries = log
        .reader()
        .replay(1, &[])
        .await
        .unwrap()
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    let decided = entries
        .iter()
        .filter(|e| verify(&e.payload, &cast.directory).unwrap().header.event_id == decision)
        .count();
    assert_eq!(decided, 1, "the decision is in the log once");
    let mut chains = ChainChecker::new();
    for e in &entries {
        let v = verify(&e.payload, &cast.directory).unwrap();
        chains
            .observe(&v.header, &v.digest)
            .unwrap_or_else(|b| panic!("log sequence {}: {b}", e.sequence));
    }
}
