//! Group commit: many events sealed, written to the outbox, published and committed as one,
//! with atomic batches (nats-server 2.12+) and with pipelined publishes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use futures::TryStreamExt as _;
use hru_domain::{CaseId, EventType, PlainSection, ProducerId};
use hru_envelope::fixture::Cast;
use hru_envelope::{ChainChecker, StaticAudiences, verify};
use hru_log::SharedLog as _;
use hru_log::{EventLog, EventToSeal, Producer};
use hru_testkit::NatsServer;

fn events(n: usize) -> Vec<EventToSeal> {
    let case = CaseId::random();
    (0..n)
        .map(|i| EventToSeal {
            case_id: case,
            event_type: EventType::ReferralReceived,
            sections: vec![PlainSection {
                name: "core",
                bytes: (i as u64).to_be_bytes().to_vec(),
            }],
            occurred_at_ms: 1_795_000_000_000,
            event_id: None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_appends_land_in_order_once_with_intact_chains() {
    let server = NatsServer::start().unwrap();
    let log = EventLog::connect(&server.url()).await.unwrap();
    assert!(
        log.appender().atomic_batches(),
        "nats-server 2.12+ takes atomic batches on HRU_EVENTS"
    );
    let cast = Cast::new(61);
    let policy = StaticAudiences::new("group", 1).share(
        EventType::ReferralReceived,
        "core",
        std::slice::from_ref(&cast.police.party),
    );
    let store = tempfile::tempdir().unwrap();
    let producer_id = ProducerId {
        party: cast.police.party.clone(),
        instance: "node-1".into(),
    };
    let mut producer = Producer::open(
        &store.path().join("producer"),
        producer_id,
        cast.police.signing.clone(),
        &log,
        &cast.directory,
    )
    .await
    .unwrap();
    let now = 1_795_000_000_000;
    let mut rng = rand_core::OsRng;
    let a = producer
        .append_many(&log, events(1_200), now, &policy, &cast.directory, &mut rng, true)
        .await
        .unwrap();
    let b = producer
        .append_many(&log, events(700), now, &policy, &cast.directory, &mut rng, false)
        .await
        .unwrap();
    assert_eq!(a.len(), 1_201, "one grant and 1,200 events, in three atomic batches");
    assert_eq!(b.len(), 700);
    let entries = log
        .reader()
        .replay(1, &[])
        .await
        .unwrap()
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    assert_eq!(entries.len(), 1_901);
    let mut chains = ChainChecker::new();
    for (e, seq) in entries.iter().zip(a.iter().chain(&b)) {
        assert_eq!(e.sequence, *seq);
        let v = verify(&e.payload, &cast.directory).unwrap();
        chains.observe(&v.header, &v.digest).unwrap();
    }
}
