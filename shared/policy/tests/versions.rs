//! Agreement versions: sealing uses the version in force, a new version turns every epoch it
//! touches (new audiences, new keys), and an event is read under the version it was sealed with.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use std::path::Path;

use hru_domain::{CaseId, EventType, ProducerId, split_draft};
use hru_envelope::{AudiencePolicy, Directory, KeyRing, OpenError, PartySecrets, Sealer, verify};
use hru_policy::{CompiledIsa, PolicySet};
use hru_wire::v1 as pb;
use prost::Message as _;

const JUNE_2026: i64 = 1_780_000_000_000;
const JUNE_2027: i64 = 1_811_000_000_000;

fn versions(directory: &Directory) -> PolicySet {
    let v1 = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies/cheshire-hru.toml"))
        .unwrap();
    // Version 2, in force from 2027, also shares referral narratives with probation.
    let v2 = v1.replacen("version = 1", "version = 2", 1).replacen(
        "effective_from = \"2026-01-01\"",
        "effective_from = \"2027-01-01\"",
        1,
    ) + "\n[[share]]\nevents = [\"ReferralReceived\"]\nsections = [\"narrative\"]\nfrom = [\"police-hru\"]\nto = [\"probation\"]\npurpose = \"risk-management\"\nclause = \"4.1\"\n";
    let mut set = PolicySet::default();
    set.insert(CompiledIsa::compile(&v1, "v1.toml", Some(directory)).unwrap());
    set.insert(CompiledIsa::compile(&v2, "v2.toml", Some(directory)).expect("v2 compiles"));
    set
}

fn referral() -> pb::event_draft::Event {
    pb::event_draft::Event::ReferralReceived(pb::ReferralReceived {
        core: Some(pb::ReferralCore {
            area: "Halton".into(),
            ..Default::default()
        }),
        identity: None,
        narrative: Some(pb::ReferralNarrative {
            text: "contact at work".into(),
        }),
    })
}

#[test]
fn each_event_is_sealed_and_read_under_its_own_version() {
    let v1_text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies/cheshire-hru.toml"))
            .unwrap();
    let parties: Vec<_> = CompiledIsa::compile(&v1_text, "x", None)
        .unwrap()
        .parties
        .keys()
        .cloned()
        .collect();
    let mut directory = Directory::default();
    let secrets: Vec<PartySecrets> = parties
        .iter()
        .map(|p| PartySecrets::generate(p.clone(), &mut rand_core::OsRng))
        .collect();
    for s in &secrets {
        directory.insert_secrets(s, "test");
    }
    let set = versions(&directory);
    let police = secrets.iter().find(|s| s.party.as_str() == "police-hru").unwrap();
    let probation = secrets.iter().find(|s| s.party.as_str() == "probation").unwrap();
    let mut sealer = Sealer::new(
        ProducerId {
            party: police.party.clone(),
            instance: "node-1".into(),
        },
        police.signing.clone(),
    );

    let mut log = Vec::new();
    for now in [JUNE_2026, JUNE_2027] {
        let isa = set.in_force("cheshire-hru", now).expect("a version in force");
        let (t, sections) = split_draft(referral());
        log.extend(
            sealer
                .seal_event(
                    CaseId::random(),
                    t,
                    sections,
                    now,
                    now,
                    isa,
                    &directory,
                    &mut rand_core::OsRng,
                )
                .unwrap(),
        );
    }
    let events: Vec<_> = log
        .iter()
        .filter(|e| e.header.event_type == EventType::ReferralReceived)
        .collect();
    assert_eq!(
        events.iter().map(|e| e.header.policy_version).collect::<Vec<_>>(),
        [1, 2],
        "the version in force seals"
    );

    // Version 2 turned every epoch the event needs: its grants say why.
    let v2_grants: Vec<pb::KeyGranted> = log
        .iter()
        .filter(|e| e.header.event_type == EventType::KeyGranted && e.header.policy_version == 2)
        .map(|e| pb::KeyGranted::decode(pb::Envelope::decode(e.bytes.as_slice()).unwrap().body.as_slice()).unwrap())
        .collect();
    assert!(!v2_grants.is_empty());
    assert!(
        v2_grants
            .iter()
            .all(|g| g.reason == pb::EpochReason::Policy as i32 || g.reason == pb::EpochReason::First as i32)
    );
    assert!(
        v2_grants.iter().any(|g| g.reason == pb::EpochReason::Policy as i32),
        "core's audience is unchanged but its epoch turns"
    );

    // Each section names the audience of the version its event was sealed under.
    for e in &events {
        let isa = set
            .version(&e.header.policy_id, e.header.policy_version)
            .expect("resolvable version");
        let v = verify(&e.bytes, &directory).unwrap();
        for s in &v.sections {
            let want = isa
                .audience(&police.party, EventType::ReferralReceived, &s.name)
                .unwrap();
            assert_eq!(
                &s.audience,
                want.id().as_str(),
                "v{} {}",
                e.header.policy_version,
                s.name
            );
        }
    }

    // probation reads the v2 narrative, not the v1 one.
    let mut ring = KeyRing::new(probation);
    for isa in set.iter() {
        for (_, _, _, a) in isa.audiences() {
            ring.know_audience(a);
        }
    }
    let mut narratives = Vec::new();
    for e in &log {
        let v = verify(&e.bytes, &directory).unwrap();
        if v.header.event_type == EventType::KeyGranted {
            ring.ingest_grant(&v).unwrap();
        } else {
            let opened = ring.open(&v);
            narratives.push(
                opened
                    .sections
                    .into_iter()
                    .find(|s| s.name == "narrative")
                    .unwrap()
                    .plaintext,
            );
        }
    }
    assert!(
        matches!(narratives[0], Err(OpenError::NotInAudience { .. })),
        "{:?}",
        narratives[0]
    );
    assert!(narratives[1].is_ok(), "{:?}", narratives[1]);
}
