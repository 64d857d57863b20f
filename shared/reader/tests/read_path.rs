//! The read path against genuine and forged envelopes under the Cheshire agreement, with
//! fixture keys: each forgery is refused with its kind, a genuine event is opened.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use std::path::Path;
use std::sync::Arc;

use hru_broker::{AUDITOR, PROVISIONER, Subject};
use hru_domain::{CaseId, EventType, PartyId, ProducerId, split_draft};
use hru_envelope::fixture::{directory_of, party_secrets};
use hru_envelope::{AudiencePolicy, Directory, KeyRing, PartySecrets, SealedEnvelope, Sealer, StaticAudiences};
use hru_policy::{CompiledIsa, PolicySet};
use hru_reader::{Incoming, Read, ReadPath, RefusalKind, StoredAt};
use hru_wire::v1 as pb;

const T: i64 = 1_795_000_000_000; // 2026-11, while cheshire-hru v1 is in force

struct World {
    directory: Directory,
    isa: CompiledIsa,
    set: Arc<PolicySet>,
}

fn world() -> World {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies/cheshire-hru.toml"))
        .unwrap();
    let parties: Vec<String> = CompiledIsa::compile(&text, "x", None)
        .unwrap()
        .parties
        .keys()
        .map(ToString::to_string)
        .collect();
    let directory = directory_of(parties.iter().map(String::as_str).chain([PROVISIONER, AUDITOR]), 1);
    let isa = CompiledIsa::compile(&text, "cheshire-hru.toml", Some(&directory)).unwrap();
    let mut set = PolicySet::default();
    set.insert(isa.clone());
    World {
        directory,
        isa,
        set: Arc::new(set),
    }
}

fn secrets(party: &str) -> PartySecrets {
    party_secrets(party, 1)
}

/// `party` seals `event` for `case` under `policy`: the grants it needs, then the event.
fn seal(
    w: &World,
    party: &str,
    case: CaseId,
    event: pb::event_draft::Event,
    policy: &dyn AudiencePolicy,
) -> Vec<SealedEnvelope> {
    let s = secrets(party);
    let sealer = Sealer::new(
        ProducerId {
            party: s.party.clone(),
            instance: "desk".into(),
        },
        s.signing.clone(),
    );
    let (t, sections) = split_draft(event);
    sealer
        .prepare_event(case, t, sections, T, T, policy, &w.directory, &mut rand_core::OsRng)
        .unwrap()
        .envelopes
}

fn reader(w: &World, party: &str) -> ReadPath {
    ReadPath::new(w.directory.clone(), w.set.clone(), KeyRing::new(&secrets(party)))
}

/// Read every envelope as stored under its own subject, except the last under `subject`.
fn read_all(
    r: &mut ReadPath,
    envelopes: &[SealedEnvelope],
    last_subject: Option<&str>,
) -> Result<Read, hru_reader::Refusal> {
    let (last, grants) = envelopes.split_last().unwrap();
    for (i, g) in grants.iter().enumerate() {
        r.read(&Incoming::logged(
            i as u64 + 1,
            g.subject.as_str(),
            &g.bytes,
            StoredAt::Unknown,
        ))
        .unwrap();
    }
    r.read(&Incoming::logged(
        envelopes.len() as u64,
        last_subject.unwrap_or(last.subject.as_str()),
        &last.bytes,
        StoredAt::Unknown,
    ))
}

fn referral() -> pb::event_draft::Event {
    pb::event_draft::Event::ReferralReceived(pb::ReferralReceived {
        core: Some(pb::ReferralCore {
            subject_ref: vec![7; 32],
            behaviours: vec![pb::Behaviour::Stalking as i32],
            area: "Warrington".into(),
            received_at_ms: T,
            out_of_hours: false,
            crime_reference: String::new(),
        }),
        identity: Some(pb::ReferralIdentity {
            subject: Some(pb::PersonIdentity {
                full_name: "Sam Doe".into(),
                ..Default::default()
            }),
            victim: None,
        }),
        narrative: None,
    })
}

fn closed() -> pb::event_draft::Event {
    pb::event_draft::Event::CaseClosed(pb::CaseClosed {
        core: Some(pb::CaseClosedCore {
            reason: "forged".into(),
            closed_at_ms: T,
        }),
    })
}

/// A policy under the agreement's own id and version that shares whatever the forger likes.
fn forged_policy(w: &World, shares: &[(EventType, &str, &[&str])]) -> StaticAudiences {
    let mut p = StaticAudiences::new(w.isa.policy_id(), w.isa.policy_version());
    for (t, section, to) in shares {
        let to: Vec<PartyId> = to.iter().map(|p| p.parse().unwrap()).collect();
        p = p.share(*t, section, &to);
    }
    p
}

#[test]
fn a_genuine_event_is_opened_under_the_version_its_header_names() {
    let w = world();
    let case = CaseId::random();
    let sealed = seal(&w, "police-hru", case, referral(), &w.isa);
    let mut r = reader(&w, "victim-advocacy");
    let Read::Event { opened, .. } = read_all(&mut r, &sealed, None).unwrap() else {
        panic!("an event")
    };
    assert!(
        opened.sections.iter().all(|s| s.plaintext.is_ok()),
        "advocacy opens core and identity"
    );
}

#[test]
fn the_same_bytes_under_another_subject_are_refused() {
    let w = world();
    let case = CaseId::random();
    let sealed = seal(&w, "police-hru", case, referral(), &w.isa);
    let elsewhere = Subject::event(case, &"probation".parse().unwrap(), EventType::ReferralReceived);
    let mut r = reader(&w, "victim-advocacy");
    let refusal = read_all(&mut r, &sealed, Some(elsewhere.as_str())).unwrap_err();
    assert_eq!(refusal.kind, RefusalKind::SubjectMismatch, "{refusal}");
}

#[test]
fn a_header_naming_a_type_the_producer_may_not_produce_is_refused() {
    let w = world();
    let case = CaseId::random();
    // Probation seals a CaseClosed (police-hru's to record) under the agreement's own id.
    let forged = forged_policy(
        &w,
        &[(EventType::CaseClosed, "core", &["police-hru", "victim-advocacy"])],
    );
    let sealed = seal(&w, "probation", case, closed(), &forged);
    for reader_party in ["police-hru", "victim-advocacy"] {
        let mut r = reader(&w, reader_party);
        let refusal = read_all(&mut r, &sealed, None).unwrap_err();
        assert_eq!(refusal.kind, RefusalKind::NotPermitted, "{reader_party}: {refusal}");
        assert!(refusal.detail.contains("produce"), "{refusal}");
    }
}

#[test]
fn a_section_sealed_wider_than_the_agreement_gives_is_refused() {
    let w = world();
    let case = CaseId::random();
    // Police-hru shares the referral's identity with probation too (the agreement does not).
    let police: PartyId = "police-hru".parse().unwrap();
    let given = |section: &str| -> Vec<PartyId> {
        w.isa
            .audience(&police, EventType::ReferralReceived, section)
            .unwrap()
            .members()
            .iter()
            .cloned()
            .collect()
    };
    let mut identity = given("identity");
    identity.push("probation".parse().unwrap());
    let forged = StaticAudiences::new(w.isa.policy_id(), w.isa.policy_version())
        .share(EventType::ReferralReceived, "core", &given("core"))
        .share(EventType::ReferralReceived, "identity", &identity);
    let sealed = seal(&w, "police-hru", case, referral(), &forged);
    let mut r = reader(&w, "probation");
    let refusal = read_all(&mut r, &sealed, None).unwrap_err();
    assert_eq!(refusal.kind, RefusalKind::OverShared, "{refusal}");
}

#[test]
fn a_section_sealed_narrower_than_the_agreement_gives_is_refused() {
    let w = world();
    let case = CaseId::random();
    let forged = forged_policy(
        &w,
        &[
            (EventType::ReferralReceived, "core", &["police-hru", "victim-advocacy"]),
            (
                EventType::ReferralReceived,
                "identity",
                &["police-hru", "victim-advocacy"],
            ),
        ],
    );
    let sealed = seal(&w, "police-hru", case, referral(), &forged);
    let mut r = reader(&w, "victim-advocacy");
    let refusal = read_all(&mut r, &sealed, None).unwrap_err();
    assert_eq!(refusal.kind, RefusalKind::UnderShared, "{refusal}");
}

#[test]
fn an_agreement_the_reader_does_not_have_is_refused() {
    let w = world();
    let case = CaseId::random();
    let rogue =
        StaticAudiences::new("rogue", 1).share(EventType::ReferralReceived, "core", &["police-hru".parse().unwrap()]);
    let sealed = seal(
        &w,
        "police-hru",
        case,
        pb::event_draft::Event::ReferralReceived(pb::ReferralReceived {
            core: match referral() {
                pb::event_draft::Event::ReferralReceived(r) => r.core,
                _ => None,
            },
            identity: None,
            narrative: None,
        }),
        &rogue,
    );
    let mut r = reader(&w, "police-hru");
    let refusal = read_all(&mut r, &sealed, None).unwrap_err();
    assert_eq!(refusal.kind, RefusalKind::UnknownAgreement, "{refusal}");
}

#[test]
fn refusal_kinds_have_the_audits_names() {
    let names: Vec<&str> = RefusalKind::ALL.iter().map(|k| k.name()).collect();
    let mut unique = names.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), names.len());
    assert!(names.contains(&"subject-mismatch") && names.contains(&"not-permitted"));
}
