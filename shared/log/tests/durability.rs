//! The log keeps what it acknowledged: a 100k-event replay in order, and a 3-node R3 cluster
//! losing random nodes (leaders included) to SIGKILL while a producer appends.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use futures::TryStreamExt as _;
use hru_log::SharedLog as _;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use bytes::Bytes;
use hru_domain::{CaseId, EventType, PlainSection, ProducerId};
use hru_envelope::fixture::Cast;
use hru_envelope::{ChainChecker, Sealer, StaticAudiences, verify};
use hru_log::{AppendError, EventLog, Expect};
use hru_testkit::{NatsCluster, NatsServer};
use rand::Rng as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_returns_exactly_what_was_appended_for_100k_events() {
    // Order, not durability, is under test here: the server's default sync keeps it quick.
    let server = NatsServer::builder().sync_always(false).start().unwrap();
    let log = EventLog::connect(&server.url()).await.unwrap();
    let client = hru_log::connect(&server.url(), None).await.unwrap();
    let js = jetstream::new(client);
    const N: u64 = 100_000;
    let mut acks = Vec::with_capacity(4096);
    for i in 0..N {
        let subject = format!("hru.ctl.load.e{}", i % 7);
        acks.push(
            js.publish(subject, Bytes::from(i.to_be_bytes().to_vec()))
                .await
                .unwrap(),
        );
        if acks.len() == 4096 {
            for a in acks.drain(..) {
                a.await.unwrap();
            }
        }
    }
    for a in acks.drain(..) {
        a.await.unwrap();
    }
    let started = Instant::now();
    let entries = log
        .reader()
        .replay(1, &[])
        .await
        .unwrap()
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(entries.len() as u64, N);
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e.sequence, i as u64 + 1, "in order, no gap");
        assert_eq!(e.payload.as_ref(), (i as u64).to_be_bytes(), "the bytes appended");
        assert_eq!(e.subject.as_str(), format!("hru.ctl.load.e{}", i % 7));
    }
    let since = entries[N as usize - 1].sequence;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mark = jiff::Timestamp::now().as_millisecond();
    for i in 0..3u64 {
        js.publish("hru.ctl.load.late", Bytes::from(i.to_be_bytes().to_vec()))
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let late = log
        .reader()
        .replay_since(mark, &[])
        .await
        .unwrap()
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    assert_eq!(
        late.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        [since + 1, since + 2, since + 3],
        "replay from a time"
    );
    let from = log
        .reader()
        .replay(N - 9, &[])
        .await
        .unwrap()
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    assert_eq!(
        from.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        (N - 9..=N + 3).collect::<Vec<_>>(),
        "replay from a sequence"
    );
    println!("replayed {N} events in {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r3_cluster_keeps_every_acknowledged_event_through_node_kills() {
    let mut cluster = NatsCluster::start(3).unwrap();
    let urls = cluster.urls().join(",");
    let log = EventLog::open(&urls, None, 3).await.expect("R3 stream on the cluster");
    let cast = Cast::new(51);
    let policy = StaticAudiences::new("r3", 1).share(
        EventType::ReferralReceived,
        "core",
        std::slice::from_ref(&cast.police.party),
    );
    let mut sealer = Sealer::new(
        ProducerId {
            party: cast.police.party.clone(),
            instance: "node-1".into(),
        },
        cast.police.signing.clone(),
    );
    let case = CaseId::random();

    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let appender = tokio::spawn(async move {
        let mut acked: Vec<(String, u64)> = Vec::new();
        let mut n = 0u32;
        while !*stop_rx.borrow_and_update() {
            n += 1;
            let sections = vec![PlainSection {
                name: "core",
                bytes: n.to_be_bytes().to_vec(),
            }];
            let now = 1_795_000_000_000;
            let batch = sealer
                .prepare_event(
                    case,
                    EventType::ReferralReceived,
                    sections,
                    now,
                    now,
                    &policy,
                    &cast.directory,
                    &mut rand_core::OsRng,
                )
                .unwrap();
            // Retry the same bytes until the cluster acknowledges them: never a new event for an old one.
            loop {
                match log.appender().append_batch(&mut sealer, &batch, Expect::Any).await {
                    Ok(acks) => {
                        for (env, ack) in batch.envelopes.iter().zip(&acks) {
                            acked.push((env.header.event_id.to_string(), ack.sequence));
                        }
                        break;
                    }
                    Err(AppendError::Unavailable { .. }) => tokio::time::sleep(Duration::from_millis(100)).await,
                    Err(e) => panic!("append failed for good: {e}"),
                }
            }
        }
        (acked, log, cast)
    });

    let mut rng = rand::thread_rng();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut kills = 0;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(1_000..2_500))).await;
        // Every other kill takes the cluster's meta leader; the rest are random nodes.
        let victim = match cluster.meta_leader() {
            Some(leader) if kills % 2 == 0 => leader,
            _ => rng.gen_range(0..3),
        };
        cluster.kill(victim).unwrap();
        tokio::time::sleep(Duration::from_millis(rng.gen_range(200..1_500))).await;
        cluster.restart(victim).unwrap();
        kills += 1;
    }
    stop_tx.send(true).unwrap();
    let (acked, log, cast) = tokio::time::timeout(Duration::from_secs(60), appender)
        .await
        .expect("appender stops")
        .unwrap();

    // Let the last restarted node catch up, then read: every acknowledged event must be there.
    let highest = acked.iter().map(|(_, s)| *s).max().unwrap_or(0);
    let mut entries = log
        .reader()
        .replay(1, &[])
        .await
        .unwrap()
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    let first_read = entries.len();
    for _ in 0..50 {
        if entries.last().map_or(0, |e| e.sequence) >= highest {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        entries = log
            .reader()
            .replay(1, &[])
            .await
            .unwrap()
            .try_collect::<Vec<_>>()
            .await
            .unwrap();
    }
    if first_read != entries.len() {
        println!(
            "a read right after the last restart saw {first_read} events; once settled, {}",
            entries.len()
        );
    }
    let mut found: HashMap<String, u64> = HashMap::new();
    let mut duplicated = 0;
    let mut chains = ChainChecker::new();
    for e in &entries {
        let v = verify(&e.payload, &cast.directory).unwrap();
        chains
            .observe(&v.header, &v.digest)
            .unwrap_or_else(|b| panic!("chain break at {}: {b}", e.sequence));
        if found.insert(v.header.event_id.to_string(), e.sequence).is_some() {
            duplicated += 1;
        }
    }
    let lost = acked.iter().filter(|(id, _)| !found.contains_key(id)).count();
    let moved = acked
        .iter()
        .filter(|(id, seq)| found.get(id).is_some_and(|s| s != seq))
        .count();
    let distinct: std::collections::HashSet<&String> = acked.iter().map(|(id, _)| id).collect();
    println!(
        "R3, {kills} node kills in 20 s: acknowledged {} ({} distinct), found {}, lost {lost}, at another sequence than acknowledged {moved}, duplicated {duplicated}",
        acked.len(),
        distinct.len(),
        entries.len()
    );
    if lost > 0 {
        let missing: Vec<u64> = acked
            .iter()
            .filter(|(id, _)| !found.contains_key(id))
            .map(|(_, s)| *s)
            .collect();
        println!(
            "missing acknowledged sequences: {:?}…",
            &missing[..missing.len().min(20)]
        );
        println!(
            "log tail: {:?}",
            entries.iter().rev().take(5).map(|e| e.sequence).collect::<Vec<_>>()
        );
    }
    assert!(acked.len() > 100, "the producer kept appending");
    assert_eq!(lost, 0);
    assert_eq!(duplicated, 0);
    let order: Vec<u64> = acked.iter().map(|(_, s)| *s).collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "acknowledged in stream order");
}
