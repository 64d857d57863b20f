//! Three geofence instances share the position stream's three partitions on a 3-node cluster,
//! each preferring one. One is killed with SIGKILL while fixes flow: its partition moves to a
//! standby within seconds, and afterwards the log holds each breach decision exactly once,
//! compared with the pure engine run over each partition's logged inputs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::TryStreamExt as _;
use hru_domain::{EventType, ProducerId};
use hru_envelope::{Directory, KeyRing, verify};
use hru_gateway::{Gateway, GatewayConfig};
use hru_log::SharedLog as _;
use hru_log::{EventLog, PositionLog};
use hru_testkit::NatsCluster;
use hru_tests::{World, metric};

const TAGS: usize = 9;
const SEED: u64 = 23;
const PARTITIONS: u32 = 3;
const INSTANCES: [&str; 3] = ["geofence-a", "geofence-b", "geofence-c"];

/// Each breach decision on the log (coverage lapses aside), with how many times it is there.
fn logged(events: &[hru_log::LogEntry], directory: &Directory, ring: &mut KeyRing) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for e in events {
        let Ok(v) = verify(&e.payload, directory) else { continue };
        if v.header.event_type == EventType::KeyGranted {
            let _ = ring.ingest_grant(&v);
        } else if v.header.event_type == EventType::TagBreach {
            let opened = ring.open(&v);
            let lapse = hru_geofence::service::logged_breach(&opened)
                .is_some_and(|b| b.kind == hru_wire::v1::BreachKind::MonitoringLapsed);
            if let Some(id) = hru_geofence::service::logged_id(&opened)
                && !lapse
            {
                *out.entry(id).or_insert(0) += 1;
            }
        }
    }
    out
}

/// The instance whose newest heartbeat speaks for `partition`, and when it was stored.
fn holder(rt: &tokio::runtime::Runtime, heartbeats: &hru_log::KeptStream, partition: u32) -> Option<(String, i64)> {
    let subject = hru_broker::Subject::heartbeat(
        &"geofence".parse().unwrap(),
        &hru_broker::stream::partition_name(partition),
    );
    let entries = rt
        .block_on(heartbeats.list(&hru_broker::Filter::exactly(&subject)))
        .ok()?;
    let e = entries.last()?;
    let signed = <hru_wire::v1::SignedHeartbeat as prost::Message>::decode(e.payload.as_ref()).ok()?;
    let h = <hru_wire::v1::GeofenceHeartbeat as prost::Message>::decode(signed.heartbeat.as_slice()).ok()?;
    let hru_broker::StoredAt::Exactly(at) = e.stored else {
        return None;
    };
    Some((h.instance, at))
}

#[test]
fn three_instances_share_the_partitions_and_a_killed_ones_moves_with_every_decision_logged_once() {
    let cluster = NatsCluster::start(3).unwrap();
    let url = cluster.urls().join(",");
    let world = World::new("../policies/cheshire-hru.toml", &hru_tests::CHESHIRE_PARTIES).on_broker(url.clone());
    let out = world.run(&[
        "log",
        "provision",
        "--replicas",
        "3",
        "--partitions",
        &PARTITIONS.to_string(),
    ]);
    assert!(
        out.status.success(),
        "provision: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let start_ms = jiff::Timestamp::now().as_millisecond();
    let mut simulator = hru_tests::fleet(&world, TAGS, SEED, start_ms);
    for i in 0..TAGS {
        simulator.approach(i);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (directory, isa) = world.deployment();
    let (positions, nats, heartbeats) = rt.block_on(async {
        let positions = PositionLog::open(&url, None, isa.positions_max_age(), 3).await.unwrap();
        let servers: Vec<async_nats::ServerAddr> = url.split(',').map(|u| u.parse().unwrap()).collect();
        let nats = async_nats::connect(servers).await.unwrap();
        let heartbeats = hru_log::KeptStream::open(&url, None, hru_broker::stream::heartbeats_config(3))
            .await
            .unwrap();
        (positions, nats, heartbeats)
    });
    assert_eq!(rt.block_on(positions.partitions()).unwrap(), PARTITIONS);
    let victims: Vec<String> = simulator.pairs().into_iter().map(|(_, v, _)| v).collect();
    rt.block_on(hru_broker::provision_devices(&nats, &victims, isa.alerts_max_age(), 3))
        .unwrap();
    let vendor = world.secrets("em-vendor");
    let mut gateway = Gateway::new(
        ProducerId {
            party: vendor.party.clone(),
            instance: "gw-test".into(),
        },
        vendor.signing.clone(),
        isa.clone(),
        directory.clone(),
        positions.clone(),
        GatewayConfig::default(),
    )
    .partitioned(PARTITIONS);
    let mut publish = |seconds: i64| {
        let fixes = simulator.step(seconds * 1000);
        rt.block_on(async {
            for f in fixes {
                gateway.push(&f.device, f.victim, f.fix);
            }
            gateway.flush(jiff::Timestamp::now().as_millisecond()).await.unwrap();
        });
    };

    // The geofence party's period chains, made once and held by every instance (as its
    // secret key is): instances making their own would fork the party's period keys.
    let keys = world.keys().display().to_string();
    let out = world.run(&["keys", "periods", "--party", "geofence", "--keys", &keys]);
    assert!(
        out.status.success(),
        "keys periods: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Three instances, each preferring one partition.
    let ports: Vec<u16> = INSTANCES.iter().map(|_| hru_tests::free_port()).collect();
    let mut children: Vec<Option<std::process::Child>> = INSTANCES
        .iter()
        .zip(&ports)
        .enumerate()
        .map(|(i, (name, port))| {
            Some(world.start_geofence_named(
                name,
                *port,
                &format!(
                    "instance = \"{name}\"\nprefer_partitions = [{i}]\nsnapshot_every_s = 0.5\nheartbeat_s = 0.25"
                ),
            ))
        })
        .collect();
    let logs = || {
        for name in INSTANCES {
            let text = std::fs::read_to_string(world.dir.path().join(format!("{name}.log"))).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            eprintln!("--- {name}.log (last lines, newest first)\n{}", tail.join("\n"));
        }
    };
    let ready = Instant::now() + Duration::from_secs(60);
    while ports.iter().any(|p| metric(*p, "hru_geofence_ready") != 1) {
        if Instant::now() > ready {
            logs();
            panic!("every instance was ready within 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for _ in 0..8 {
        publish(30);
        std::thread::sleep(Duration::from_millis(250));
    }
    for (i, port) in ports.iter().enumerate() {
        assert_eq!(
            metric(*port, "hru_geofence_partitions_held"),
            1,
            "{} holds its partition",
            INSTANCES[i]
        );
    }
    assert_eq!(holder(&rt, &heartbeats, 1).map(|h| h.0).as_deref(), Some("geofence-b"));

    // geofence-b is killed mid-stream: partition 1 moves to another instance.
    let mut b = children[1].take().unwrap();
    b.kill().unwrap();
    b.wait().unwrap();
    let killed = Instant::now();
    let killed_ms = jiff::Timestamp::now().as_millisecond();
    let mut moved = None;
    while moved.is_none() {
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "partition 1 moved within 30 s"
        );
        publish(5);
        std::thread::sleep(Duration::from_millis(100));
        moved = holder(&rt, &heartbeats, 1).filter(|(who, at)| who != "geofence-b" && *at > killed_ms);
    }
    let (to, at) = moved.unwrap();
    println!(
        "geofence-b killed → partition 1 evaluated by {to} after {:.1} s",
        (at - killed_ms) as f64 / 1000.0
    );
    for _ in 0..8 {
        publish(30);
        std::thread::sleep(Duration::from_millis(250));
    }
    let held: u64 = [0, 2]
        .iter()
        .map(|i| metric(ports[*i], "hru_geofence_partitions_held"))
        .sum();
    assert_eq!(held, 3, "the two instances left hold every partition");

    // Every decision on the log exactly once, as the pure engine decides each partition.
    let log = rt.block_on(EventLog::connect(&url)).unwrap();
    let (events, stored) = hru_tests::logged_inputs(&rt, &log, &positions);
    let ring = || hru_runtime::deployment::key_ring(&world.keys(), &"geofence".parse().unwrap()).unwrap();
    let decided: Vec<(u32, hru_geofence::BreachUpdate)> = (0..PARTITIONS)
        .flat_map(|p| {
            hru_tests::partition_breaches(&events, &stored, &directory, &mut ring(), p, PARTITIONS)
                .into_iter()
                .map(move |b| (p, b))
        })
        .filter(|(_, b)| b.case.is_some())
        .collect();
    let partition_of = |id: &str| {
        decided
            .iter()
            .find(|(_, b)| b.message_id() == id)
            .map(|(p, b)| format!("partition {p}, tag {}, {:?}", b.tag, b.kind))
    };
    let mut want: Vec<String> = decided.iter().map(|(_, b)| b.message_id()).collect();
    assert!(!want.is_empty(), "the simulation raises breaches");
    let n = want.len();
    want.sort();
    want.dedup();
    assert_eq!(want.len(), n, "the engine decides each once");
    let deadline = Instant::now() + Duration::from_secs(60);
    let got = loop {
        let events = rt
            .block_on(async { log.reader().replay(1, &[]).await?.try_collect::<Vec<_>>().await })
            .unwrap();
        let got = logged(&events, &directory, &mut ring());
        if want.iter().all(|id| got.contains_key(id)) || Instant::now() > deadline {
            break got;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    for child in children.iter_mut().flatten() {
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let twice: Vec<_> = got.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "logged twice: {twice:?}");
    let missed: Vec<_> = want
        .iter()
        .filter(|id| !got.contains_key(*id))
        .map(|id| (id, partition_of(id)))
        .collect();
    if !missed.is_empty() {
        logs();
    }
    assert!(missed.is_empty(), "missed: {missed:?}");
    let unexpected: Vec<_> = got.keys().filter(|id| want.binary_search(id).is_err()).collect();
    assert!(unexpected.is_empty(), "not the engine's: {unexpected:?}");
    println!("{} decisions, each logged once", want.len());
    // Every producer chain intact: a decision two instances both appended is the first one's,
    // and the second's chain does not count it.
    let verified = world.run(&["audit", "verify"]);
    assert!(
        verified.status.success(),
        "audit verify: {}{}",
        String::from_utf8_lossy(&verified.stdout),
        String::from_utf8_lossy(&verified.stderr)
    );
}
