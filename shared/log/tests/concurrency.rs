//! Optimistic concurrency per case on a real nats-server: two writers race on one case for
//! 1,000 rounds; each round exactly one wins, the loser gets Conflict with the current
//! sequence, re-reads and succeeds; no update is lost.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use futures::TryStreamExt as _;
use hru_log::SharedLog as _;
use std::collections::HashMap;

use hru_domain::{CaseId, EventId, EventType, PlainSection, ProducerId};
use hru_envelope::fixture::Cast;
use hru_envelope::{Sealer, StaticAudiences};
use hru_log::{AppendError, EventLog, Expect};
use hru_testkit::NatsServer;

const NOW: i64 = 1_795_000_000_000;

fn section(n: u32) -> Vec<PlainSection> {
    vec![PlainSection {
        name: "core",
        bytes: n.to_be_bytes().to_vec(),
    }]
}

fn policy(cast: &Cast) -> StaticAudiences {
    StaticAudiences::new("race", 1).share(
        EventType::ReferralReceived,
        "core",
        &[cast.police.party.clone(), cast.probation.party.clone()],
    )
}

fn writer(cast: &Cast, instance: &str) -> Sealer {
    Sealer::new(
        ProducerId {
            party: cast.police.party.clone(),
            instance: instance.into(),
        },
        cast.police.signing.clone(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_one_case_no_lost_update() {
    let server = NatsServer::start().unwrap();
    let cast = Cast::new(41);
    let policy = policy(&cast);
    let log_a = EventLog::connect(&server.url()).await.unwrap();
    let log_b = EventLog::connect(&server.url()).await.unwrap();
    let mut a = writer(&cast, "node-a");
    let mut b = writer(&cast, "node-b");
    let case = CaseId::random();
    let mut expected_of: HashMap<EventId, u64> = HashMap::new();
    let (mut wins_a, mut wins_b) = (0u32, 0u32);
    let rounds = 1_000u32;
    for round in 0..rounds {
        let seen = log_a.reader().case_version(case).await.unwrap();
        let batch_a = a
            .prepare_event(
                case,
                EventType::ReferralReceived,
                section(round),
                NOW,
                NOW,
                &policy,
                &cast.directory,
                &mut rand_core::OsRng,
            )
            .unwrap();
        let batch_b = b
            .prepare_event(
                case,
                EventType::ReferralReceived,
                section(round),
                NOW,
                NOW,
                &policy,
                &cast.directory,
                &mut rand_core::OsRng,
            )
            .unwrap();
        let (ra, rb) = tokio::join!(
            log_a.appender().append_batch(&mut a, &batch_a, Expect::CaseAt(seen)),
            log_b.appender().append_batch(&mut b, &batch_b, Expect::CaseAt(seen))
        );
        let (loser, loser_log, winner_ack, conflict, winner_batch) = match (ra, rb) {
            (Ok(acks), Err(e)) => {
                wins_a += 1;
                (&mut b, &log_b, *acks.last().unwrap(), e, &batch_a)
            }
            (Err(e), Ok(acks)) => {
                wins_b += 1;
                (&mut a, &log_a, *acks.last().unwrap(), e, &batch_b)
            }
            (ra, rb) => panic!("round {round}: exactly one writer must win: {ra:?} / {rb:?}"),
        };
        expected_of.insert(winner_batch.envelopes.last().unwrap().header.event_id, seen);
        let AppendError::Conflict { current, .. } = conflict else {
            panic!("round {round}: the loser gets Conflict, got {conflict}")
        };
        assert_eq!(
            current, winner_ack.sequence,
            "Conflict carries the case's current sequence"
        );
        // The loser re-reads and appends again on top of the winner.
        let seen = loser_log.reader().case_version(case).await.unwrap();
        assert_eq!(seen, current);
        let retry = loser
            .prepare_event(
                case,
                EventType::ReferralReceived,
                section(round),
                NOW,
                NOW,
                &policy,
                &cast.directory,
                &mut rand_core::OsRng,
            )
            .unwrap();
        loser_log
            .appender()
            .append_batch(loser, &retry, Expect::CaseAt(seen))
            .await
            .expect("the re-read append succeeds");
        expected_of.insert(retry.envelopes.last().unwrap().header.event_id, seen);
    }
    assert!(
        wins_a > 0 && wins_b > 0,
        "both writers won some rounds: {wins_a} / {wins_b}"
    );

    // The case's history is linear: every event was appended on top of the one before it.
    let entries = log_a
        .reader()
        .replay(1, &[hru_broker::Filter::case_events(case)])
        .await
        .unwrap()
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    assert_eq!(entries.len() as u32, 2 * rounds, "every acknowledged event is there");
    let mut previous = 0;
    for e in &entries {
        let v = hru_envelope::verify(&e.payload, &cast.directory).unwrap();
        assert_eq!(
            expected_of[&v.header.event_id], previous,
            "event at {} was decided on the version before it",
            e.sequence
        );
        previous = e.sequence;
    }
    println!(
        "{rounds} rounds: writer A won {wins_a}, writer B won {wins_b}; {} events, 0 lost",
        entries.len()
    );
}

#[tokio::test]
async fn a_retried_publish_is_deduplicated_before_the_concurrency_check() {
    let server = NatsServer::start().unwrap();
    let cast = Cast::new(42);
    let policy = policy(&cast);
    let log = EventLog::connect(&server.url()).await.unwrap();
    let mut w = writer(&cast, "node-a");
    let case = CaseId::random();
    let batch = w
        .prepare_event(
            case,
            EventType::ReferralReceived,
            section(1),
            NOW,
            NOW,
            &policy,
            &cast.directory,
            &mut rand_core::OsRng,
        )
        .unwrap();
    let acks = log
        .appender()
        .append_batch(&mut w, &batch, Expect::CaseAt(0))
        .await
        .unwrap();
    // The same bytes again, as after a lost acknowledgement: same id, now-stale expectation.
    let again = log
        .appender()
        .append_expecting(batch.envelopes.last().unwrap(), Expect::CaseAt(0))
        .await
        .expect("deduplicated, not a conflict");
    assert!(again.duplicate);
    assert_eq!(again.sequence, acks.last().unwrap().sequence);
    assert_eq!(
        log.reader()
            .replay(1, &[])
            .await
            .unwrap()
            .try_collect::<Vec<_>>()
            .await
            .unwrap()
            .len(),
        batch.envelopes.len(),
        "stored once"
    );
}
