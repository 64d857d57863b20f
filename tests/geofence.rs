//! The geofence on a real nats-server: simulated fixes through the gateway reach a control-room
//! subscriber as TagBreach events and the victim as signed alerts. The geofence process is
//! killed with SIGKILL and restarted 20 times while fixes flow, snapshotting its state every
//! 200 ms (so restarts load a snapshot and replay the tail); afterwards the log holds each
//! breach decision exactly once — none duplicated, none missed — compared with the pure engine
//! run over the same logged inputs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use futures::TryStreamExt as _;
use hru_log::SharedLog as _;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use hru_domain::EventType;
use hru_envelope::{Directory, KeyRing, verify};
use hru_gateway::Gateway;
use hru_gateway::simulate::Simulator;
use hru_geofence::service::verify_alert;
use hru_log::{EventLog, PositionLog};
use hru_policy::CompiledIsa;
use hru_tests::World;
use hru_wire::v1 as pb;
use rand::Rng as _;

const TAGS: usize = 6;
const SEED: u64 = 11;

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

/// A world with the geofence's inputs set up: for each of `TAGS` tags, fitted, an exclusion
/// zone at its victim's home and a proximity rule; tags 0-2 drive to their victims' homes.
struct Scene {
    world: World,
    rt: tokio::runtime::Runtime,
    directory: Directory,
    isa: CompiledIsa,
    positions: PositionLog,
    nats: async_nats::Client,
    gateway: Gateway,
    simulator: Simulator,
}

impl Scene {
    fn new() -> Self {
        let world = World::new("../policies/cheshire-hru.toml", &hru_tests::CHESHIRE_PARTIES);
        world.provision();
        // Simulated time runs from now, faster than the wall clock; the gateway stamps batches
        // with the wall clock, as a real one would.
        let start_ms = jiff::Timestamp::now().as_millisecond();
        let mut simulator = hru_tests::fleet(&world, TAGS, SEED, start_ms);
        for i in 0..3 {
            simulator.approach(i);
        }
        let rt = hru_tests::runtime();
        let (directory, isa) = world.deployment();
        let (positions, nats) = rt.block_on(async {
            let positions = PositionLog::open(&world.nats.url(), None, isa.positions_max_age(), 1)
                .await
                .unwrap();
            let nats = async_nats::connect(world.nats.url()).await.unwrap();
            (positions, nats)
        });
        // Each victim's phone has its stream.
        let victims: Vec<String> = simulator.pairs().into_iter().map(|(_, v, _)| v).collect();
        rt.block_on(hru_broker::provision_devices(&nats, &victims, isa.alerts_max_age(), 1))
            .unwrap();
        let gateway = hru_tests::vendor_gateway(&world, &isa, &directory, &positions);
        Self {
            world,
            rt,
            directory,
            isa,
            positions,
            nats,
            gateway,
            simulator,
        }
    }

    /// 30 s of the fleet's fixes, published through the gateway.
    fn publish_chunk(&mut self) {
        let fixes = self.simulator.step(30_000);
        let gateway = &mut self.gateway;
        self.rt.block_on(async {
            for f in fixes {
                gateway.push(&f.device, f.victim, f.fix);
            }
            gateway.flush(jiff::Timestamp::now().as_millisecond()).await.unwrap();
        });
    }

    /// The geofence party's key ring: its secret key and the period keys its service holds.
    fn ring(&self) -> KeyRing {
        hru_runtime::deployment::key_ring(&self.world.keys(), &"geofence".parse().unwrap()).unwrap()
    }

    /// What the pure engine decides over the logged inputs, and the logged position messages.
    fn expected(&self, log: &EventLog) -> (Vec<String>, usize) {
        let (events, positions) = hru_tests::logged_inputs(&self.rt, log, &self.positions);
        (
            expected(&events, &positions, &self.directory, &mut self.ring()),
            positions.len(),
        )
    }

    /// Every breach on the log (coverage lapses aside), by case, with its first update as
    /// logged.
    fn breaches(&self, log: &EventLog) -> BTreeMap<(String, String), pb::BreachCore> {
        let events = self
            .rt
            .block_on(async { log.reader().replay(1, &[]).await?.try_collect::<Vec<_>>().await })
            .unwrap();
        let mut ring = self.ring();
        let mut out = BTreeMap::new();
        for e in &events {
            let Ok(v) = verify(&e.payload, &self.directory) else {
                continue;
            };
            if v.header.event_type == EventType::KeyGranted {
                let _ = ring.ingest_grant(&v);
            } else if v.header.event_type == EventType::TagBreach {
                let opened = ring.open(&v);
                let Some(core) = opened.sections[0].plaintext.as_ref().ok() else {
                    continue;
                };
                let core = <pb::BreachCore as prost::Message>::decode(core.as_slice()).unwrap();
                if core.kind != pb::BreachKind::MonitoringLapsed as i32 {
                    let id = uuid::Uuid::from_slice(&core.breach_id).unwrap().to_string();
                    out.entry((v.header.case_id.unwrap().to_string(), id)).or_insert(core);
                }
            }
        }
        out
    }

    /// `hru geofence explain` of one breach as police-hru, with `extra` flags.
    fn explain_as_police(&self, case: &str, breach: &str, extra: &[&str]) -> std::process::Output {
        let keys = self.world.keys().display().to_string();
        let mut args = vec![
            "geofence",
            "explain",
            "--party",
            "police-hru",
            "--keys",
            &keys,
            "--case",
            case,
            "--breach",
            breach,
        ];
        args.extend_from_slice(extra);
        self.world.run(&args)
    }

    /// `hru geofence explain` as police-hru, one JSON object per update: the exit status and
    /// the updates' replay verdicts.
    fn explain(&self, case: &str, breach: &str) -> (std::process::Output, Vec<String>) {
        let out = self.explain_as_police(case, breach, &["--format", "json"]);
        let verdicts = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["replay"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        (out, verdicts)
    }

    /// Wait up to 60 s for every decision in `want` on the log; what the log then holds.
    fn logged_when_caught_up(&self, log: &EventLog, want: &[String]) -> BTreeMap<String, usize> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let events = self
                .rt
                .block_on(async { log.reader().replay(1, &[]).await?.try_collect::<Vec<_>>().await })
                .unwrap();
            let got = hru_tests::logged_decisions(&events, &self.directory, &mut self.ring());
            if want.iter().all(|id| got.contains_key(id)) || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The decisions logged twice, missed and unexpected, compared with `want`.
fn compare(want: &[String], got: &BTreeMap<String, usize>) {
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
}

#[test]
fn breaches_survive_twenty_kills_exactly_once_and_reach_the_control_room_and_victim() {
    let mut scene = Scene::new();
    // The control room listens for breaches.
    let mut breaches = scene
        .rt
        .block_on(scene.nats.subscribe("hru.evt.*.geofence.TagBreach"))
        .unwrap();
    // Snapshots every 200 ms (and one after each start): most restarts load one and replay
    // the tail; kills land mid-write too.
    let metrics = hru_tests::free_port();

    // 20 minutes of fixes in 40 chunks of 30 s. The geofence is killed mid-stream 20 times.
    let mut rng = rand::thread_rng();
    for _ in 0..20 {
        let mut child = scene.world.start_geofence_with(metrics, "snapshot_every_s = 0.2");
        scene.publish_chunk();
        std::thread::sleep(Duration::from_millis(rng.gen_range(100..600)));
        scene.publish_chunk();
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..300)));
        child.kill().unwrap();
        child.wait().unwrap();
    }

    // A last geofence catches up; the log then holds exactly what the pure engine decides.
    let mut child = scene.world.start_geofence_with(metrics, "snapshot_every_s = 0.2");
    let log = scene.rt.block_on(EventLog::connect(&scene.world.nats.url())).unwrap();
    let (want, positions_now) = scene.expected(&log);
    assert!(
        want.iter().any(|id| !id.contains('-') || id.len() == 36),
        "the simulation raises breaches: {want:?}"
    );
    let got = scene.logged_when_caught_up(&log, &want);
    // The decisions may all be logged by earlier starts: read the last start's figures once it
    // is ready, not before it serves them.
    let restored = when_ready(metrics, "hru_geofence_restored");
    let replayed = hru_tests::metric(metrics, "hru_geofence_replayed_positions");
    let rejected = hru_tests::metric(metrics, "hru_geofence_snapshots_rejected_total");
    child.kill().unwrap();
    child.wait().unwrap();
    println!(
        "last start: restored from a snapshot {restored}, {replayed} of {positions_now} position messages replayed, {rejected} snapshots passed over"
    );
    assert_eq!(restored, 1, "the last start loaded a snapshot");
    assert!(
        (replayed as usize) < positions_now,
        "it replayed only the tail: {replayed} of {positions_now}"
    );
    compare(&want, &got);

    // Every breach, explained by police-hru from the evidence its updates carry: each update
    // replays through the pure engine to exactly what was logged.
    let logged_breaches = scene.breaches(&log);
    let mut updates = 0;
    for (case, breach) in logged_breaches.keys() {
        let (out, verdicts) = scene.explain(case, breach);
        assert!(
            out.status.success() && !verdicts.is_empty() && verdicts.iter().all(|v| v == "agrees"),
            "explain {breach}: {verdicts:?}\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        updates += verdicts.len();
    }
    println!(
        "explained {} breaches, {updates} updates: every replay agrees",
        logged_breaches.len()
    );
    assert_eq!(updates, want.len(), "every decision was explained");

    // Updates the evidence does not support, signed with the geofence's own key, are told
    // apart: explain exits 1 naming each. One opening's fix moved 5 km; one naming the clock
    // (which only decides coverage lapses) as its cause.
    let opened_by_a_fix = |c: &pb::BreachCore| {
        c.state == pb::BreachState::Opened as i32
            && matches!(
                c.evidence.as_ref().and_then(|e| e.cause.as_ref()),
                Some(pb::breach_evidence::Cause::TagFix(f)) if f.position.is_some()
            )
    };
    let ((case, breach), core) = logged_breaches
        .iter()
        .find(|(_, c)| opened_by_a_fix(c))
        .expect("a breach opened by a tag's fix");
    let mut moved = core.clone();
    if let Some(pb::breach_evidence::Cause::TagFix(f)) = moved.evidence.as_mut().and_then(|e| e.cause.as_mut()) {
        f.position.as_mut().unwrap().lat += 0.045;
    }
    let mut by_the_clock = core.clone();
    by_the_clock.evidence.as_mut().unwrap().cause = Some(pb::breach_evidence::Cause::ClockMs(core.observed_at_ms));
    for (i, forged) in [moved, by_the_clock].into_iter().enumerate() {
        let draft = pb::EventDraft {
            case_id: case.clone(),
            occurred_at: String::new(),
            event: Some(pb::event_draft::Event::TagBreach(pb::TagBreach { core: Some(forged) })),
        };
        let desc = hru_wire::descriptor_pool()
            .get_message_by_name("hru.v1.EventDraft")
            .unwrap();
        let mut dynamic = prost_reflect::DynamicMessage::new(desc);
        dynamic.transcode_from(&draft).unwrap();
        let json = serde_json::to_string(&dynamic).unwrap();
        let out = scene.world.append(
            "geofence",
            &scene.world.event(&format!("forged-breach-{i}.json"), &json),
        );
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let (out, verdicts) = scene.explain(case, breach);
    assert_eq!(out.status.code(), Some(1), "{verdicts:?}");
    assert_eq!(
        verdicts.iter().filter(|v| *v == "disagrees").count(),
        2,
        "the forged updates, and only they: {verdicts:?}"
    );
    let human = scene.explain_as_police(case, breach, &[]);
    println!("{}", String::from_utf8_lossy(&human.stdout));

    // The control room saw TagBreach events it can read; the victims got signed alerts.
    let (world, rt, directory, nats) = (&scene.world, &scene.rt, &scene.directory, &scene.nats);
    let victims: Vec<String> = scene.simulator.pairs().into_iter().map(|(_, v, _)| v).collect();
    let control = world.secrets("police-control");
    rt.block_on(async {
        let message = tokio::time::timeout(Duration::from_secs(5), breaches.next())
            .await
            .unwrap()
            .unwrap();
        let v = verify(&message.payload, directory).unwrap();
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
            if let Ok(g) = verify(&e.payload, directory) {
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
                let alert = verify_alert(&message.payload, directory).unwrap();
                assert!(
                    decisions.insert((alert.breach_id.clone(), alert.kind, alert.at_ms)),
                    "{victim}'s phone got one alert twice: {alert:?}"
                );
                stored.push(message.payload);
            }
        }
        println!("victims' streams: {} alerts, none twice", stored.len());
        let alert = stored.first().expect("an alert reached a victim's phone");
        let body = verify_alert(alert, directory).unwrap();
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
            verify_alert(&forged, directory).is_err(),
            "a changed alert does not verify"
        );
    });
}

/// Stop a child process cleanly (SIGINT, as Ctrl-C): the geofence writes a last snapshot.
fn stop(child: &mut std::process::Child) {
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -INT");
    child.wait().unwrap();
}

/// Wait up to 60 s for the geofence serving metrics on `port` to be ready; the metric `name`.
fn when_ready(port: u16, name: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    while hru_tests::metric(port, "hru_geofence_ready") != 1 {
        assert!(Instant::now() < deadline, "the geofence was ready within 60 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    hru_tests::metric(port, name)
}

#[test]
fn a_restart_loads_the_newest_good_snapshot_falls_back_past_bad_ones_and_decides_exactly_once() {
    let mut scene = Scene::new();
    let metrics = hru_tests::free_port();
    let start = |scene: &Scene| scene.world.start_geofence_with(metrics, "snapshot_every_s = 0.3");
    let log = scene.rt.block_on(EventLog::connect(&scene.world.nats.url())).unwrap();
    let snapshots = scene
        .rt
        .block_on(hru_log::KeptStream::open(
            &scene.world.nats.url(),
            None,
            hru_broker::stream::snapshots_config(scene.isa.positions_max_age(), 1),
        ))
        .unwrap();
    let geofence: hru_domain::PartyId = "geofence".parse().unwrap();
    let manifests = |scene: &Scene| -> Vec<(u64, pb::SignedManifest, pb::SnapshotManifest)> {
        let filter = hru_broker::Filter::snapshot_manifests(&geofence, &hru_geofence::service::partition_name(0));
        let mut all: Vec<_> = scene
            .rt
            .block_on(snapshots.list(&filter))
            .unwrap()
            .into_iter()
            .map(|e| {
                let signed = <pb::SignedManifest as prost::Message>::decode(e.payload.as_ref()).unwrap();
                let m = <pb::SnapshotManifest as prost::Message>::decode(signed.manifest.as_slice()).unwrap();
                (e.sequence, signed, m)
            })
            .collect();
        all.sort_by_key(|(seq, _, m)| std::cmp::Reverse((m.taken_at_ms, *seq)));
        all
    };

    // 1. A first run from nothing: a full replay, then snapshots as fixes arrive; a clean stop
    //    writes one more.
    let mut child = start(&scene);
    assert_eq!(
        when_ready(metrics, "hru_geofence_restored"),
        0,
        "nothing to restore at first"
    );
    for _ in 0..5 {
        scene.publish_chunk();
        std::thread::sleep(Duration::from_millis(600));
    }
    // Its metrics count the snapshots written (within a second of each write).
    let counted = Instant::now() + Duration::from_secs(5);
    while hru_tests::metric(metrics, "hru_geofence_snapshots_total") < 3 {
        assert!(Instant::now() < counted, "the snapshots written are counted");
        std::thread::sleep(Duration::from_millis(100));
    }
    stop(&mut child);
    assert!(
        hru_tests::metric(metrics, "hru_geofence_snapshots_total") == 0,
        "the stopped geofence serves nothing"
    );
    let written = manifests(&scene);
    assert_eq!(written.len(), 3, "three slots are written in turn");

    // 2. Restarted with nothing new: the newest snapshot covers everything.
    let mut child = start(&scene);
    assert_eq!(
        when_ready(metrics, "hru_geofence_restored"),
        1,
        "restored from a snapshot"
    );
    assert_eq!(
        hru_tests::metric(metrics, "hru_geofence_replayed_positions"),
        0,
        "nothing after the cut"
    );
    child.kill().unwrap();
    child.wait().unwrap();

    // 3. Fixes arrive while it is down; the newest snapshot's first chunk is then overwritten
    //    (a torn write): the restart passes over it, loads the one before and replays from its
    //    cut.
    for _ in 0..2 {
        scene.publish_chunk();
    }
    let (_, _, newest) = manifests(&scene).remove(0);
    let nats = &scene.nats;
    let js = {
        let _runtime = scene.rt.enter();
        async_nats::jetstream::new(nats.clone())
    };
    let subject = hru_broker::Subject::snapshot(&geofence, &hru_geofence::service::partition_name(0), newest.slot, "0");
    scene
        .rt
        .block_on(async { js.publish(subject.to_string(), "torn".into()).await?.await })
        .unwrap();
    let mut child = start(&scene);
    assert_eq!(
        when_ready(metrics, "hru_geofence_restored"),
        1,
        "restored from an older snapshot"
    );
    let rejected = hru_tests::metric(metrics, "hru_geofence_snapshots_rejected_total");
    let replayed = hru_tests::metric(metrics, "hru_geofence_replayed_positions");
    assert!(rejected >= 1, "the torn snapshot was passed over ({rejected})");
    assert!(replayed > 0, "the tail after the older cut was replayed");
    let (want, total) = scene.expected(&log);
    assert!((replayed as usize) < total, "only the tail: {replayed} of {total}");
    compare(&want, &scene.logged_when_caught_up(&log, &want));
    child.kill().unwrap();
    child.wait().unwrap();

    // 4. Every manifest replaced by one signed with another party's key (a forgery): none is
    //    believed, and the restart replays every input.
    let police = scene.world.secrets("police-hru");
    for (_, signed, m) in manifests(&scene) {
        let detached = hru_envelope::sign_detached(&police, hru_geofence::snapshots::MANIFEST_DOMAIN, &signed.manifest);
        let forged = pb::SignedManifest {
            manifest: signed.manifest.clone(),
            key_id: detached.key_id,
            signature: detached.signature,
        };
        let subject = hru_broker::Subject::snapshot(&geofence, &hru_geofence::service::partition_name(0), m.slot, "m");
        scene
            .rt
            .block_on(async {
                js.publish(subject.to_string(), prost::Message::encode_to_vec(&forged).into())
                    .await?
                    .await
            })
            .unwrap();
    }
    scene.publish_chunk();
    let mut child = start(&scene);
    assert_eq!(
        when_ready(metrics, "hru_geofence_restored"),
        0,
        "no forged snapshot is used"
    );
    let (want, total) = scene.expected(&log);
    assert_eq!(
        hru_tests::metric(metrics, "hru_geofence_replayed_positions") as usize,
        total,
        "every position message replayed"
    );
    assert!(hru_tests::metric(metrics, "hru_geofence_snapshots_rejected_total") >= 3);
    compare(&want, &scene.logged_when_caught_up(&log, &want));
    stop(&mut child);

    // 5. HRU_POSITIONS is deleted and created again (restored from elsewhere, say) and grows
    //    past the snapshot's cut: the snapshot names a last position the new stream does not
    //    hold, so it is not used.
    let (_, _, newest) = manifests(&scene).remove(0);
    scene
        .rt
        .block_on(async { js.delete_stream(hru_broker::POSITIONS_STREAM).await })
        .unwrap();
    scene.positions = scene
        .rt
        .block_on(PositionLog::open(
            &scene.world.nats.url(),
            None,
            scene.isa.positions_max_age(),
            1,
        ))
        .unwrap();
    while scene.rt.block_on(scene.positions.bounds()).unwrap().1 < newest.next_position {
        scene.publish_chunk();
    }
    let mut child = start(&scene);
    assert_eq!(
        when_ready(metrics, "hru_geofence_restored"),
        0,
        "a snapshot of another position stream is not used"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}
