//! The geofence on a real nats-server: simulated fixes through the gateway reach a control-room
//! subscriber as TagBreach events and the victim as signed alerts. The geofence process is
//! killed with SIGKILL and restarted 20 times while fixes flow; afterwards the log holds each
//! breach decision exactly once — none duplicated, none missed — compared with the pure engine
//! run over the same logged inputs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use futures::TryStreamExt as _;
use hru_log::SharedLog as _;
use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures::StreamExt as _;
use hru_domain::{EventType, ProducerId};
use hru_envelope::{Directory, KeyRing, verify};
use hru_gateway::simulate::Simulator;
use hru_gateway::{Gateway, GatewayConfig};
use hru_geofence::service::{logged_id, verify_alert};
use hru_log::{EventLog, PositionLog};
use hru_policy::CompiledIsa;
use hru_tests::World;
use hru_wire::v1 as pb;
use rand::Rng as _;

const TAGS: usize = 6;
const SEED: u64 = 11;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Every breach decision in the log: message id → how many times it was appended.
fn logged(events: &[hru_log::LogEntry], directory: &Directory, ring: &mut KeyRing) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for e in events {
        let Ok(v) = verify(&e.payload, directory) else { continue };
        if v.header.event_type == EventType::KeyGranted {
            let _ = ring.ingest_grant(&v);
        } else if v.header.event_type == EventType::TagBreach
            && let Some(id) = logged_id(&ring.open(&v))
        {
            *out.entry(id).or_default() += 1;
        }
    }
    out
}

/// The pure engine over the logged inputs, in the order the service reads them.
fn expected(
    events: &[hru_log::LogEntry],
    positions: &[hru_log::LogEntry],
    directory: &Directory,
    ring: &mut KeyRing,
) -> Vec<String> {
    hru_tests::engine_breaches(events, positions, directory, ring)
        .into_iter()
        .filter(|b| b.case.is_some())
        .map(|b| b.message_id())
        .collect()
}

#[test]
fn breaches_survive_twenty_kills_exactly_once_and_reach_the_control_room_and_victim() {
    let world = World::new("../policies/cheshire-hru.toml", &hru_tests::CHESHIRE_PARTIES);
    world.provision();
    let d = |rel: &str| hru_tests::path(world.dir.path(), rel);
    // Simulated time runs from now, faster than the wall clock; the gateway stamps batches with
    // the wall clock, as a real one would.
    let start_ms = jiff::Timestamp::now().as_millisecond();
    let simulator = Simulator::new(SEED, TAGS, 1.0, start_ms);

    // Police and the vendor set up each tag: fitted, an exclusion zone at the victim's home, a
    // proximity rule.
    for (i, (tag, victim, home)) in simulator.pairs().into_iter().enumerate() {
        let case = uuid::Uuid::from_u128(0xca5e_0000 + i as u128).to_string();
        let id = |n: u128| b64(uuid::Uuid::from_u128((n << 32) + i as u128).as_bytes());
        let fitted = hru_tests::tag_fitted_json(&case, &tag, &id(1), &victim, start_ms);
        let zone = hru_tests::home_zone_json(&case, &id(2), &tag, home);
        let rule = format!(
            r#"{{"caseId":"{case}","proximityRuleSet":{{"core":{{"ruleId":"{}","tagId":"{tag}","victimDeviceId":"{victim}","warningM":1500,"breachM":250,"maxVictimFixAgeS":300}}}}}}"#,
            id(3)
        );
        for (party, json) in [("em-vendor", fitted), ("police-hru", zone), ("police-hru", rule)] {
            let out = world.append(party, &world.event(&format!("setup-{i}-{party}.json"), &json));
            assert!(out.status.success(), "{json}: {}", String::from_utf8_lossy(&out.stderr));
        }
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let directory = Directory::from_toml(
        &std::fs::read_to_string(world.dir.path().join("policies/directory.toml")).unwrap(),
        "directory.toml",
    )
    .unwrap();
    let isa = CompiledIsa::compile(
        &std::fs::read_to_string(world.dir.path().join("policies/cheshire-hru.toml")).unwrap(),
        "cheshire-hru.toml",
        Some(&directory),
    )
    .unwrap();
    let vendor = world.secrets("em-vendor");
    let (positions, nats) = rt.block_on(async {
        let positions = PositionLog::open(&world.nats.url(), None, isa.positions_max_age(), 1)
            .await
            .unwrap();
        let nats = async_nats::connect(world.nats.url()).await.unwrap();
        (positions, nats)
    });
    // The control room listens for breaches; each victim's phone has its stream.
    let victims: Vec<String> = simulator.pairs().into_iter().map(|(_, v, _)| v).collect();
    rt.block_on(hru_broker::provision_devices(&nats, &victims, isa.alerts_max_age(), 1))
        .unwrap();
    let mut breaches = rt.block_on(nats.subscribe("hru.evt.*.geofence.TagBreach")).unwrap();
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
    );

    std::fs::write(
        world.dir.path().join("geofence.toml"),
        format!(
            "keys_dir = {:?}\npolicies_dir = {:?}\ndata_dir = {:?}\n",
            d("keys"),
            d("policies"),
            d("geofence-data")
        ),
    )
    .unwrap();
    let start_geofence = || {
        Command::new(hru_tests::hru_bin())
            .args(["geofence", "run", "--config", &d("geofence.toml")])
            .env("HRU_NATS_URL", world.nats.url())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };

    // 20 minutes of fixes in 40 chunks of 30 s; tags 0-2 drive to their victims' homes. The
    // geofence is killed mid-stream 20 times.
    let mut simulator = simulator;
    for i in 0..3 {
        simulator.approach(i);
    }
    let mut rng = rand::thread_rng();
    let mut publish_chunk = |simulator: &mut Simulator| {
        let fixes = simulator.step(30_000);
        rt.block_on(async {
            for f in fixes {
                gateway.push(&f.device, f.victim, f.fix);
            }
            gateway.flush(jiff::Timestamp::now().as_millisecond()).await.unwrap();
        });
    };
    for _ in 0..20 {
        let mut child = start_geofence();
        publish_chunk(&mut simulator);
        std::thread::sleep(Duration::from_millis(rng.gen_range(100..600)));
        publish_chunk(&mut simulator);
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..300)));
        child.kill().unwrap();
        child.wait().unwrap();
    }

    // A last geofence catches up; the log then holds exactly what the pure engine decides.
    let mut child = start_geofence();
    let police = world.secrets("geofence");
    let log = rt.block_on(EventLog::connect(&world.nats.url())).unwrap();
    let (events_now, positions_now) = hru_tests::logged_inputs(&rt, &log, &positions);
    // Everything the geofence party keeps: its secret key and the period keys its service holds.
    let ring = || hru_runtime::deployment::key_ring(&world.keys(), &police.party).unwrap();
    let want = expected(&events_now, &positions_now, &directory, &mut ring());
    assert!(
        want.iter().any(|id| !id.contains('-') || id.len() == 36),
        "the simulation raises breaches: {want:?}"
    );
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
    child.kill().unwrap();
    child.wait().unwrap();
    let duplicated: Vec<_> = got.iter().filter(|(_, n)| **n > 1).collect();
    let missed: Vec<_> = want.iter().filter(|id| !got.contains_key(*id)).collect();
    let extra: Vec<_> = got.keys().filter(|id| !want.contains(id)).collect();
    println!(
        "{} breach decisions expected, {} logged; duplicated {}, missed {}, unexpected {}",
        want.len(),
        got.len(),
        duplicated.len(),
        missed.len(),
        extra.len()
    );
    assert!(duplicated.is_empty(), "duplicated: {duplicated:?}");
    assert!(missed.is_empty(), "missed: {missed:?}");
    assert!(extra.is_empty(), "unexpected: {extra:?}");

    // The control room saw TagBreach events it can read; the victims got signed alerts.
    let control = world.secrets("police-control");
    rt.block_on(async {
        let message = tokio::time::timeout(Duration::from_secs(5), breaches.next())
            .await
            .unwrap()
            .unwrap();
        let v = verify(&message.payload, &directory).unwrap();
        let mut ring = KeyRing::new(&control);
        for e in log
            .reader()
            .replay(1, &[hru_broker::Filter::all_key_grants()])
            .await
            .unwrap()
            .try_collect::<Vec<_>>()
            .await
            .unwrap()
        {
            if let Ok(g) = verify(&e.payload, &directory) {
                let _ = ring.ingest_grant(&g);
            }
        }
        let opened = ring.open(&v);
        assert!(
            opened.sections[0].plaintext.is_ok(),
            "the control room reads the breach"
        );
        // Each victim's stream holds each alert once, across twenty kills of the geofence.
        let js = async_nats::jetstream::new(nats.clone());
        let mut stored = Vec::new();
        for victim in &victims {
            let mut stream = js.get_stream(hru_broker::alert_stream(victim)).await.unwrap();
            let last = stream.info().await.unwrap().state.last_sequence;
            let mut decisions = std::collections::BTreeSet::new();
            for seq in 1..=last {
                let message = stream.get_raw_message(seq).await.unwrap();
                let alert = verify_alert(&message.payload, &directory).unwrap();
                assert!(
                    decisions.insert((alert.breach_id.clone(), alert.kind, alert.at_ms)),
                    "{victim}'s phone got one alert twice: {alert:?}"
                );
                stored.push(message.payload);
            }
        }
        println!("victims' streams: {} alerts, none twice", stored.len());
        let alert = stored.first().expect("an alert reached a victim's phone");
        let body = verify_alert(alert, &directory).unwrap();
        assert!(
            matches!(
                body.kind(),
                pb::BreachKind::Proximity | pb::BreachKind::ProximityWarning | pb::BreachKind::Exclusion
            ),
            "{body:?}"
        );
        // A forged alert (the body changed after signing) is refused.
        let mut forged = <pb::SignedVictimAlert as prost::Message>::decode(alert.as_ref()).unwrap();
        forged.alert.push(0);
        let forged = prost::Message::encode_to_vec(&forged);
        assert!(
            verify_alert(&forged, &directory).is_err(),
            "a changed alert does not verify"
        );
    });
}
