//! A node that was down when an epoch's retention ended destroys its key on start, before it
//! serves anything: its producer store holds an epoch of January 2018 (kept six years, so
//! expired in 2024); the node's start puts a signed `EpochKeyDestroyed` for it on the log, and
//! by the time the node answers, its store no longer holds the key.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use futures::TryStreamExt as _;
use hru_domain::{CaseId, EventType, PlainSection, ProducerId};
use hru_log::SharedLog as _;
use hru_log::{EventToSeal, PartyView, Producer};
use hru_tests::{CHESHIRE_PARTIES, World};
use hru_wire::v1 as pb;
use prost::Message as _;

const JANUARY_2018: i64 = 1_516_000_000_000;

#[test]
fn a_node_destroys_expired_epoch_keys_before_it_serves() {
    let w = World::secured("../policies/cheshire-hru.toml", &CHESHIRE_PARTIES);
    w.provision();
    let (directory, isa) = w.deployment();
    let police = w.secrets("police-hru");
    let store = w.dir.path().join("node-police-hru/producer");
    std::fs::create_dir_all(store.parent().unwrap()).unwrap();
    let rt = hru_tests::runtime();
    let url = w.nats.url();
    let (audience, epoch) = rt.block_on(async {
        let log = PartyView::open(&url, Some(&police.broker_identity()), &police.party)
            .await
            .unwrap();
        let mut producer = Producer::open(
            &store,
            ProducerId {
                party: police.party.clone(),
                instance: "node-1".into(),
            },
            police.signing.clone(),
            &log,
            &directory,
        )
        .await
        .unwrap();
        // A zone recorded in January 2018 (the agreement keeps zones six years).
        let zone = pb::ZoneDefined {
            core: Some(pb::ZoneCore {
                label: "old zone".into(),
                ..Default::default()
            }),
        };
        let (event_type, sections) = hru_domain::split_draft(pb::event_draft::Event::ZoneDefined(zone));
        assert_eq!(isa.retention_of(EventType::ZoneDefined).class(), "6y");
        producer
            .append_many(
                &log,
                vec![EventToSeal {
                    case_id: CaseId::random(),
                    event_type,
                    sections: sections
                        .into_iter()
                        .filter(|s: &PlainSection| s.name == "core")
                        .collect(),
                    occurred_at_ms: JANUARY_2018,
                    event_id: None,
                }],
                JANUARY_2018,
                &isa,
                &directory,
                &mut rand_core::OsRng,
                true,
            )
            .await
            .unwrap();
        let ((audience, _), state) = producer.sealer().epochs().iter().next().unwrap();
        (audience.to_string(), state.epoch)
    });

    // The node starts: before it answers, the key is destroyed and the destruction logged.
    let node = w.start_node("police-hru", "");
    let channel = rt.block_on(w.channel(&node, "police-hru"));
    drop(channel);
    // Read once, at once: the node appended it before it began to serve.
    let destroyed = rt.block_on(async {
        let log = hru_log::EventLog::open(&url, Some(&w.secrets("auditor").broker_identity()), 1)
            .await
            .unwrap();
        let entries: Vec<_> = log.reader().replay(1, &[]).await.unwrap().try_collect().await.unwrap();
        entries
            .iter()
            .filter_map(|e| hru_envelope::verify(&e.payload, &directory).ok())
            .filter(|v| v.header.event_type == EventType::EpochKeyDestroyed)
            .map(|v| {
                (
                    v.header.producer.to_string(),
                    pb::EpochKeyDestroyed::decode(v.body.as_slice()).unwrap(),
                )
            })
            .collect::<Vec<_>>()
    });
    assert_eq!(
        destroyed,
        vec![(
            "police-hru/node-1".to_owned(),
            pb::EpochKeyDestroyed {
                producer: "police-hru".into(),
                audience,
                epoch,
                instance: "node-1".into(),
            }
        )],
        "the node announced the destruction of its expired key"
    );
}
