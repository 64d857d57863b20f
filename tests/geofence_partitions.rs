//! Three geofence instances share the position stream's three partitions on a 3-node cluster,
//! each preferring one. One is killed with SIGKILL while fixes flow: its partition moves to a
//! standby within seconds, and afterwards the log holds each breach decision exactly once,
//! compared with the pure engine run over each partition's logged inputs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use std::time::{Duration, Instant};

use futures::TryStreamExt as _;
use hru_log::SharedLog as _;
use hru_log::{EventLog, PositionLog};
use hru_testkit::NatsCluster;
use hru_tests::{World, metric};

const TAGS: usize = 9;
const SEED: u64 = 23;
const PARTITIONS: u32 = 3;
const INSTANCES: [&str; 3] = ["geofence-a", "geofence-b", "geofence-c"];
/// Seconds without a message from a tag before its monitoring lapses.
const LAPSE_S: u64 = 4;

/// A fix far from every zone.
fn far_fix(seq: u64, at: i64) -> hru_wire::v1::PositionFix {
    hru_wire::v1::PositionFix {
        fix_seq: seq,
        device_time_ms: at,
        received_at_ms: at,
        position: Some(hru_wire::v1::LatLon { lat: 53.0, lon: -2.0 }),
        accuracy_m: 5.0,
        source: hru_wire::v1::FixSource::Gps as i32,
        battery_percent: 80,
        strap: hru_wire::v1::StrapState::Intact as i32,
    }
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
    let world = World::new("../policies/cheshire-hru.toml", &hru_tests::CHESHIRE_PARTIES)
        .on_broker(url.clone())
        .with_replicas(3);
    world.provision_while_forming(&["--partitions", &PARTITIONS.to_string()]);
    let start_ms = jiff::Timestamp::now().as_millisecond();
    let mut simulator = hru_tests::fleet(&world, TAGS, SEED, start_ms);
    for i in 0..TAGS {
        simulator.approach(i);
    }
    let rt = hru_tests::runtime();
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
    let mut gateway = hru_tests::vendor_gateway(&world, &isa, &directory, &positions).partitioned(PARTITIONS);
    // A tag fitted later, in another partition than 1, sending from then on.
    let late = (0..)
        .map(|i| format!("late-{i}"))
        .find(|t| hru_broker::stream::partition_of(t, PARTITIONS) != 1)
        .unwrap();
    let late_sending = std::cell::Cell::new(false);
    let mut late_seq = 0;
    let mut publish = |seconds: i64| {
        let fixes = simulator.step(seconds * 1000);
        rt.block_on(async {
            for f in fixes {
                gateway.push(&f.device, f.victim, f.fix);
            }
            if late_sending.get() {
                late_seq += 1;
                let now = jiff::Timestamp::now().as_millisecond();
                gateway.push(&late, false, far_fix(late_seq, now));
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
                    "instance = \"{name}\"\nprefer_partitions = [{i}]\nsnapshot_every_s = 0.5\nheartbeat_s = 0.25\nlapse_after_s = {LAPSE_S}"
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
    // A tag is fitted now, after the dead instance's last snapshot of partition 1: the instance
    // taking partition 1 over reads it in the view's tail, and must leave it to its own
    // partition's holder (watching it would lapse a tag that is sending).
    let case = uuid::Uuid::from_u128(0x1a7e_0001).to_string();
    let order = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        uuid::Uuid::from_u128(0x1a7e_0002).as_bytes(),
    );
    let fitted = hru_tests::tag_fitted_json(&case, &late, &order, "victim-late", killed_ms);
    let out = world.append("em-vendor", &world.event("late.json", &fitted));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    late_sending.set(true);
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
    // geofence-c is paused (SIGSTOP) until partition 2 moves, then resumed: it finds the
    // partition gone and drops it, deciding nothing more there.
    let c = children[2].as_ref().unwrap().id().to_string();
    let signal = |sig: &str| {
        let status = std::process::Command::new("kill").args([sig, &c]).status().unwrap();
        assert!(status.success(), "kill {sig}");
    };
    signal("-STOP");
    let paused_ms = jiff::Timestamp::now().as_millisecond();
    let paused = Instant::now();
    loop {
        assert!(
            paused.elapsed() < Duration::from_secs(30),
            "partition 2 moved within 30 s"
        );
        publish(5);
        std::thread::sleep(Duration::from_millis(100));
        if holder(&rt, &heartbeats, 2).is_some_and(|(who, at)| who != "geofence-c" && at > paused_ms) {
            break;
        }
    }
    println!(
        "geofence-c paused → partition 2 evaluated elsewhere after {:.1} s",
        paused.elapsed().as_secs_f64()
    );
    signal("-CONT");
    // Fixes flow on for longer than the lapse time: no tag that sends lapses.
    let until = Instant::now() + Duration::from_secs(LAPSE_S + 4);
    while Instant::now() < until {
        publish(5);
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = rt.block_on(EventLog::connect(&url)).unwrap();
    let lapsed = {
        let events = rt
            .block_on(async { log.reader().replay(1, &[]).await?.try_collect::<Vec<_>>().await })
            .unwrap();
        let mut ring = hru_runtime::deployment::key_ring(&world.keys(), &"geofence".parse().unwrap()).unwrap();
        hru_tests::logged_lapses(&events, &directory, &mut ring)
    };
    if !lapsed.is_empty() {
        logs();
    }
    assert!(lapsed.is_empty(), "tags that send lapsed: {lapsed:?}");
    let held: u64 = [0, 1, 2]
        .iter()
        .map(|i| metric(ports[*i], "hru_geofence_partitions_held"))
        .sum();
    assert_eq!(held, 3, "every partition is held once");
    assert_eq!(
        metric(ports[2], "hru_geofence_partitions_held"),
        0,
        "the resumed instance dropped what it lost"
    );

    // Every decision on the log exactly once, as the pure engine decides each partition.
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
        let got = hru_tests::logged_decisions(&events, &directory, &mut ring());
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
    // Each victim's phone holds each alert once, across the handover.
    let alerts = rt.block_on(async {
        let js = async_nats::jetstream::new(nats.clone());
        let mut alerts = 0;
        for victim in &victims {
            let mut stream = js.get_stream(hru_broker::alert_stream(victim)).await.unwrap();
            let last = stream.info().await.unwrap().state.last_sequence;
            let mut decisions = std::collections::BTreeSet::new();
            for seq in 1..=last {
                let message = stream.get_raw_message(seq).await.unwrap();
                let alert = hru_geofence::service::verify_alert(&message.payload, &directory).unwrap();
                assert!(
                    decisions.insert((alert.breach_id.clone(), alert.kind, alert.at_ms)),
                    "{victim}'s phone got one alert twice: {alert:?}"
                );
                alerts += 1;
            }
        }
        alerts
    });
    assert!(alerts > 0, "alerts reached the victims' phones");
    println!("victims' streams: {alerts} alerts, none twice");
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
