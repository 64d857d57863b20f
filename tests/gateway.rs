//! The EM gateway on a real nats-server: fixes are batched by count and by linger, an idle
//! gateway sends heartbeats naming it, a bad vendor line is named and skipped while the good
//! ones go out, and fixes received while the broker is down are kept and reach it exactly once
//! when it returns (store and forward), the batches' chain unbroken.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::TryStreamExt as _;
use hru_domain::{EventType, ProducerId};
use hru_envelope::{KeyRing, verify};
use hru_gateway::run::{Sent, feed};
use hru_gateway::{Gateway, GatewayConfig};
use hru_log::PositionLog;
use hru_tests::{CHESHIRE_PARTIES, World};
use hru_wire::v1 as pb;
use prost::Message as _;

/// A vendor line: `n` fixes of `device`, numbered from `first`.
fn line(device: &str, first: u64, n: u64) -> String {
    let fixes: Vec<String> = (first..first + n)
        .map(|seq| {
            format!(
                r#"{{"fixSeq":"{seq}","deviceTimeMs":"{}","position":{{"lat":53.19,"lon":-2.89}},"accuracyM":8}}"#,
                1_795_000_000_000u64 + seq * 1000
            )
        })
        .collect();
    format!(r#"{{"deviceId":"{device}","fixes":[{}]}}"#, fixes.join(","))
}

/// What the position stream holds, as the geofence opens it: per batch (producer seq,
/// gateway, fixes per device, heartbeat time).
type Batch = (u64, String, BTreeMap<String, Vec<u64>>, i64);

fn batches(world: &World, positions: &PositionLog, rt: &tokio::runtime::Runtime) -> Vec<Batch> {
    let (directory, _) = world.deployment();
    let stored: Vec<hru_log::LogEntry> = rt
        .block_on(async { positions.replay(1).await?.try_collect().await })
        .unwrap();
    let mut ring: KeyRing = hru_runtime::deployment::key_ring(&world.keys(), &"geofence".parse().unwrap()).unwrap();
    let mut out = Vec::new();
    for e in &stored {
        let v = verify(&e.payload, &directory).unwrap();
        if v.header.event_type == EventType::KeyGranted {
            ring.ingest_grant(&v).unwrap();
            continue;
        }
        let opened = ring.open(&v);
        let batch = pb::PositionBatch::decode(opened.sections[0].plaintext.as_ref().unwrap().as_slice()).unwrap();
        let devices = batch
            .devices
            .iter()
            .map(|d| (d.device_id.clone(), d.fixes.iter().map(|f| f.fix_seq).collect()))
            .collect();
        out.push((v.header.producer_seq, batch.gateway, devices, batch.heartbeat_at_ms));
    }
    out
}

/// A batch's producer seq, gateway and (device, fixes) per device.
type Shape<'a> = (u64, &'a str, Vec<(&'a str, usize)>);

fn gateway(world: &World, positions: &PositionLog, config: GatewayConfig) -> Gateway {
    let (directory, isa) = world.deployment();
    let vendor = world.secrets("em-vendor");
    Gateway::new(
        ProducerId {
            party: vendor.party.clone(),
            instance: "gw-run".into(),
        },
        vendor.signing.clone(),
        isa,
        directory,
        positions.clone(),
        config,
    )
    .named("vendor-gw-1")
}

/// The world provisioned, a runtime, the position stream and the vendor's gateway batching
/// `batch_size` fixes, lingering `linger_ms` and beating every `heartbeat_ms`.
fn setup(
    world: &World,
    batch_size: usize,
    linger_ms: u64,
    heartbeat_ms: u64,
) -> (tokio::runtime::Runtime, PositionLog, Gateway) {
    world.provision();
    let rt = hru_tests::runtime();
    let (_, isa) = world.deployment();
    let positions = rt
        .block_on(PositionLog::open(&world.nats.url(), None, isa.positions_max_age(), 1))
        .unwrap();
    let config = GatewayConfig {
        batch_size,
        linger: Duration::from_millis(linger_ms),
        heartbeat: Duration::from_millis(heartbeat_ms),
    };
    let gw = gateway(world, &positions, config);
    (rt, positions, gw)
}

#[test]
fn batches_follow_count_linger_and_heartbeat_and_a_bad_line_is_named_and_skipped() {
    let world = World::new("../policies/cheshire-hru.toml", &CHESHIRE_PARTIES);
    let (rt, positions, mut gw) = setup(&world, 5, 200, 300);

    // A full batch is due at once.
    let fix = |seq: u64| {
        hru_gateway::run::parse_line(1, &line("tag-1", seq, 1))
            .unwrap()
            .fixes
            .remove(0)
    };
    for seq in 1..=4 {
        gw.push("tag-1", false, fix(seq));
        assert!(!gw.due(Instant::now()), "not due before the batch is full or lingers");
    }
    gw.push("tag-1", false, fix(5));
    assert!(gw.due(Instant::now()), "five fixes fill the batch");
    rt.block_on(gw.flush(jiff::Timestamp::now().as_millisecond())).unwrap();

    // One fix lingers 200 ms, no longer.
    gw.push("tag-2", false, fix(6));
    assert!(!gw.due(Instant::now()));
    assert!(gw.next_due(Instant::now()) <= Duration::from_millis(200));
    std::thread::sleep(Duration::from_millis(220));
    assert!(gw.due(Instant::now()), "the oldest fix has lingered long enough");
    rt.block_on(gw.flush(jiff::Timestamp::now().as_millisecond())).unwrap();

    // Idle, a heartbeat falls due after 300 ms: an empty batch naming the gateway.
    assert!(!gw.due(Instant::now()));
    std::thread::sleep(Duration::from_millis(320));
    assert!(gw.due(Instant::now()));
    rt.block_on(gw.flush(jiff::Timestamp::now().as_millisecond())).unwrap();

    // The vendor feed: a line that is not JSON, and one naming no tag, are skipped and counted;
    // the good lines around them go out.
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let lines = [
        line("tag-3", 10, 2),
        r#"{"deviceId":"tag-3","#.to_owned(),
        line("Not A Tag", 12, 1),
        line("tag-4", 13, 1),
    ];
    for (i, l) in lines.into_iter().enumerate() {
        tx.try_send((i + 1, l)).unwrap();
    }
    drop(tx);
    let sent: Sent = rt.block_on(feed(&mut gw, rx, std::future::pending())).unwrap();
    assert_eq!((sent.fixes, sent.rejected), (3, 2));

    let got = batches(&world, &positions, &rt);
    let shape: Vec<Shape<'_>> = got
        .iter()
        .map(|(seq, gateway, devices, _)| {
            (
                *seq,
                gateway.as_str(),
                devices.iter().map(|(d, f)| (d.as_str(), f.len())).collect(),
            )
        })
        .collect();
    // Sequence 1 is the key grant of the first batch's epoch.
    assert_eq!(
        shape,
        vec![
            (2, "vendor-gw-1", vec![("tag-1", 5)]),
            (3, "vendor-gw-1", vec![("tag-2", 1)]),
            (4, "vendor-gw-1", vec![]),
            (5, "vendor-gw-1", vec![("tag-3", 2), ("tag-4", 1)]),
        ]
    );
}

#[test]
fn fixes_received_while_the_broker_is_down_reach_it_exactly_once_when_it_returns() {
    let mut world = World::new("../policies/cheshire-hru.toml", &CHESHIRE_PARTIES);
    let (rt, positions, mut gw) = setup(&world, 50, 20, 200);
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    let feeding = rt.spawn(async move {
        let sent = feed(&mut gw, rx, std::future::pending()).await;
        (sent, gw)
    });
    let mut next = 1u64;
    let mut send = |n: u64| {
        for _ in 0..n {
            let l = line(&format!("tag-{}", next % 7), next, 1);
            tx.blocking_send((next as usize, l))
                .expect("the gateway is still taking the vendor's lines");
            next += 1;
        }
    };
    // Before, during and after an outage of the broker.
    send(200);
    std::thread::sleep(Duration::from_millis(300));
    world.nats.stop().unwrap();
    send(300);
    // Longer than a publish waits for its acknowledgement (5 s): publishes fail meanwhile.
    std::thread::sleep(Duration::from_secs(8));
    world.nats.restart().unwrap();
    send(200);
    drop(tx);
    let (sent, _gw) = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(60), feeding)
            .await
            .expect("the feed ends within 60 s of its input ending")
            .unwrap()
    });
    let sent = sent.expect("the gateway rides out the outage");
    assert_eq!(sent.fixes, 700);

    // Every fix exactly once, in batches whose chain has no gap.
    let got = batches(&world, &positions, &rt);
    let mut seen: BTreeMap<u64, usize> = BTreeMap::new();
    for (_, _, devices, _) in &got {
        for seqs in devices.values() {
            for s in seqs {
                *seen.entry(*s).or_default() += 1;
            }
        }
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "fixes stored twice: {twice:?}");
    let missing: Vec<u64> = (1..=700).filter(|s| !seen.contains_key(s)).collect();
    assert!(missing.is_empty(), "fixes lost: {missing:?}");
    let seqs: Vec<u64> = got.iter().map(|(s, ..)| *s).collect();
    let mut expected = seqs.clone();
    expected.sort_unstable();
    expected.dedup();
    assert_eq!(seqs, expected, "each batch once, in order");
}

#[test]
fn a_backlog_goes_out_in_batches_of_at_most_batch_size_never_one_the_server_refuses() {
    let world = World::new("../policies/cheshire-hru.toml", &CHESHIRE_PARTIES);
    let (rt, positions, mut gw) = setup(&world, 2_000, 10, 1_000);
    // What a broker outage leaves behind: 30,000 fixes of 300 tags waiting (as one batch, more
    // than the server's 1 MiB payload limit).
    let fix = hru_gateway::run::parse_line(1, &line("tag-1", 1, 1))
        .unwrap()
        .fixes
        .remove(0);
    for seq in 1..=30_000u64 {
        let mut f = fix;
        f.fix_seq = seq;
        f.device_time_ms += i64::try_from(seq).unwrap() * 1_000;
        gw.push(&format!("tag-{}", seq % 300), false, f);
    }
    // A fix taken before all the others, received last.
    let mut early = fix;
    early.fix_seq = 0;
    gw.push("tag-7", false, early);
    let now = jiff::Timestamp::now().as_millisecond();
    let flushed = rt.block_on(gw.flush(now)).expect("the backlog goes out");
    assert_eq!(flushed.fixes, 30_001);
    let got = batches(&world, &positions, &rt);
    let sizes: Vec<usize> = got.iter().map(|(_, _, d, _)| d.values().map(Vec::len).sum()).collect();
    assert_eq!(sizes.iter().sum::<usize>(), 30_001, "every fix once");
    assert!(
        sizes.iter().all(|n| *n <= 2_000),
        "batches of at most batch_size: {sizes:?}"
    );
    // Only the last batch says event time has reached now: a tag whose fixes are in a later
    // batch is not passed by the clock before they are judged.
    let beats: Vec<i64> = got.iter().map(|(.., h)| *h).collect();
    assert!(beats.len() >= 15, "{beats:?}");
    assert_eq!(beats.last(), Some(&now));
    assert!(beats[..beats.len() - 1].iter().all(|h| *h < now), "{beats:?}");
    // Each tag's fixes in the order the engine judges them (device time), across the batches.
    let mut seen: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (_, _, devices, _) in &got {
        for (d, f) in devices {
            seen.entry(d.clone()).or_default().extend(f);
        }
    }
    assert!(seen.values().all(|f| f.windows(2).all(|w| w[0] < w[1])));
    // The chain is unbroken: consecutive producer sequences.
    let seqs: Vec<u64> = got.iter().map(|(s, ..)| *s).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
}
