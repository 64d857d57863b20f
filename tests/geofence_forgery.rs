//! The geofence against a partner's forgery, on a real nats-server: the EM vendor, with its own
//! genuine signing key, seals a `ZoneRevoked` for the victim's exclusion zone (an event only the
//! police HRU may produce) and publishes it under its own `TagFitted` subject and under the
//! header's own subject. The geofence's read path refuses the first (counted by reason in its
//! metrics), its view never holds the second, the zone stays in force, and the tag driving to the victim's home raises an
//! exclusion breach; an engine that believed the forged header would have raised none.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use futures::TryStreamExt as _;
use hru_domain::{CaseId, EventType, PlainSection, ProducerId};
use hru_envelope::{Directory, KeyRing, Sealer, StaticAudiences, verify};
use hru_gateway::simulate::Simulator;
use hru_log::SharedLog as _;
use hru_log::{EventLog, PositionLog};
use hru_policy::CompiledIsa;
use hru_tests::{World, free_port, metric};
use hru_wire::v1 as pb;
use prost::Message as _;

#[test]
fn a_forged_zone_revocation_leaves_the_zone_in_force() {
    let world = World::new("../policies/cheshire-hru.toml", &hru_tests::CHESHIRE_PARTIES);
    world.provision();
    let start_ms = jiff::Timestamp::now().as_millisecond();
    let mut simulator = Simulator::new(5, 1, 1.0, start_ms);
    let (tag, victim, home) = simulator.pairs().remove(0);
    let case = uuid::Uuid::from_u128(0xf0_0000);
    let b64 = hru_tests::uuid_b64;
    let zone_id = uuid::Uuid::from_u128(0x2001);
    let fitted = hru_tests::tag_fitted_json(&case.to_string(), &tag, &b64(0x1001), &victim, start_ms);
    let zone = hru_tests::home_zone_json(&case.to_string(), &b64(0x2001), &tag, home);
    for (party, json) in [("em-vendor", fitted), ("police-hru", zone)] {
        let out = world.append(party, &world.event(&format!("setup-{party}.json"), &json));
        assert!(out.status.success(), "{json}: {}", String::from_utf8_lossy(&out.stderr));
    }

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
    let rt = hru_tests::runtime();
    let log = rt.block_on(EventLog::connect(&world.nats.url())).unwrap();

    // The vendor's forgery: a ZoneRevoked for the zone, shared exactly as the police's zone
    // events are, under its own genuine key; twice, once under its TagFitted subject and once
    // under the header's own subject.
    let vendor = world.secrets("em-vendor");
    let police_id: hru_domain::PartyId = "police-hru".parse().unwrap();
    let readers: Vec<_> = hru_envelope::AudiencePolicy::audience(&isa, &police_id, EventType::ZoneRevoked, "core")
        .unwrap()
        .members()
        .iter()
        .cloned()
        .collect();
    let policy = StaticAudiences::new(&isa.id, isa.version).share(EventType::ZoneRevoked, "core", &readers);
    let core = pb::ZoneRevokedCore {
        zone_id: zone_id.as_bytes().to_vec(),
        reason: "order varied".into(),
    };
    let mut sealer = Sealer::new(
        ProducerId {
            party: vendor.party.clone(),
            instance: "forger".into(),
        },
        vendor.signing.clone(),
    );
    let now = jiff::Timestamp::now().as_millisecond();
    for subject_type in [EventType::TagFitted, EventType::ZoneRevoked] {
        let batch = sealer
            .prepare_event(
                CaseId(case),
                EventType::ZoneRevoked,
                vec![PlainSection {
                    name: "core",
                    bytes: core.encode_to_vec(),
                }],
                now,
                now,
                &policy,
                &directory,
                &mut rand_core::OsRng,
            )
            .unwrap();
        sealer.commit(&batch, batch.envelopes.len());
        rt.block_on(async {
            for env in &batch.envelopes {
                let subject = if env.header.event_type == EventType::ZoneRevoked {
                    format!("hru.evt.{}.em-vendor.{subject_type}", case.simple())
                } else {
                    env.subject.to_string()
                };
                let client = log.client();
                let js = async_nats::jetstream::new(client);
                js.publish(subject, env.bytes.clone().into())
                    .await
                    .unwrap()
                    .await
                    .unwrap();
            }
        });
    }

    // The geofence runs; the tag drives to the victim's home.
    let metrics_port = free_port();
    let mut geofence = world.start_geofence(metrics_port);
    let positions = rt
        .block_on(PositionLog::open(&world.nats.url(), None, isa.positions_max_age(), 1))
        .unwrap();
    let mut gateway = hru_tests::vendor_gateway(&world, &isa, &directory, &positions);
    let control = world.secrets("police-control");
    let mut breaches = rt
        .block_on(log.client().subscribe("hru.evt.*.geofence.TagBreach"))
        .unwrap();
    simulator.approach(0);
    let deadline = Instant::now() + Duration::from_secs(120);
    let exclusion = 'drive: loop {
        assert!(
            Instant::now() < deadline,
            "no exclusion breach: the zone was switched off"
        );
        let fixes = simulator.step(30_000);
        rt.block_on(async {
            for f in fixes {
                gateway.push(&f.device, f.victim, f.fix);
            }
            gateway.flush(jiff::Timestamp::now().as_millisecond()).await.unwrap();
        });
        let until = Instant::now() + Duration::from_millis(500);
        while let Ok(Some(message)) = rt.block_on(async {
            tokio::time::timeout(until.saturating_duration_since(Instant::now()), breaches.next()).await
        }) {
            let v = verify(&message.payload, &directory).unwrap();
            let mut ring = KeyRing::new(&control);
            let grants = rt
                .block_on(async {
                    log.reader()
                        .replay(1, &[hru_broker::Filter::all_key_grants()])
                        .await?
                        .try_collect::<Vec<_>>()
                        .await
                })
                .unwrap();
            for g in grants {
                if let Ok(g) = verify(&g.payload, &directory) {
                    let _ = ring.ingest_grant(&g);
                }
            }
            let opened = ring.open(&v);
            let core = pb::BreachCore::decode(opened.sections[0].plaintext.as_ref().unwrap().as_slice()).unwrap();
            let kind = Some(core.kind());
            if kind == Some(pb::BreachKind::Exclusion) {
                break 'drive kind;
            }
        }
    };
    println!("the geofence raised {exclusion:?} at the victim's home");
    let refused = |reason: &str| metric(metrics_port, &format!("hru_read_refused_total{{reason=\"{reason}\"}}"));
    let (mismatch, not_permitted) = (refused("subject-mismatch"), refused("not-permitted"));
    println!("geofence: hru_read_refused_total subject-mismatch {mismatch}, not-permitted {not_permitted}");
    assert!(mismatch >= 1, "the forgery under the TagFitted subject is counted");
    // The copy under the header's own subject never reaches the geofence: its view's filter
    // holds only what the agreement gives it, and no rule lets the vendor produce ZoneRevoked.
    assert_eq!(not_permitted, 0);
    geofence.kill().unwrap();
    geofence.wait().unwrap();

    // An engine believing the forged headers would have switched the zone off.
    let geofence_party = world.secrets("geofence");
    let (events, stored) = hru_tests::logged_inputs(&rt, &log, &positions);
    let believed = hru_tests::engine_breaches(&events, &stored, &directory, &mut KeyRing::new(&geofence_party))
        .iter()
        .filter(|b| b.case.is_some() && b.kind == pb::BreachKind::Exclusion)
        .count();
    println!("an engine believing the forged headers raises {believed} exclusion breaches");
    assert_eq!(believed, 0, "the forgery would have switched the zone off");
}
