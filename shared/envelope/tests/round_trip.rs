//! Seal a referral at police-hru and open it as each party: each reads exactly its sections,
//! and every envelope verifies with the public directory alone.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use hru_domain::{CaseId, EventType, split_draft};
use hru_envelope::fixture::Cast;
use hru_envelope::{KeyRing, OpenError, PartySecrets, SealedEnvelope, Sealer, verify};
use hru_wire::v1 as pb;
use prost::Message as _;

const NOW: i64 = 1_795_000_000_000;

fn referral() -> pb::event_draft::Event {
    pb::event_draft::Event::ReferralReceived(pb::ReferralReceived {
        core: Some(pb::ReferralCore {
            subject_ref: vec![9; 32],
            behaviours: vec![pb::Behaviour::Stalking as i32],
            area: "Cheshire East".into(),
            received_at_ms: NOW,
            out_of_hours: true,
            crime_reference: "CC-2026-0042".into(),
        }),
        identity: Some(pb::ReferralIdentity {
            subject: Some(pb::PersonIdentity {
                full_name: "Sam Example".into(),
                ..Default::default()
            }),
            victim: None,
        }),
        narrative: None,
    })
}

fn seal(cast: &Cast) -> Vec<SealedEnvelope> {
    let mut sealer = Sealer::new(
        hru_domain::ProducerId {
            party: cast.police.party.clone(),
            instance: "node-1".into(),
        },
        cast.police.signing.clone(),
    );
    let (t, sections) = split_draft(referral());
    sealer
        .seal_event(
            CaseId::random(),
            t,
            sections,
            NOW,
            NOW,
            &cast.referral_policy(),
            &cast.directory,
            &mut rand_core::OsRng,
        )
        .expect("seals")
}

fn read_as(
    cast: &Cast,
    reader: &PartySecrets,
    envelopes: &[SealedEnvelope],
) -> Vec<(String, Result<Vec<u8>, OpenError>)> {
    let mut ring = KeyRing::new(reader);
    let mut out = Vec::new();
    for e in envelopes {
        let v = verify(&e.bytes, &cast.directory).expect("verifies with the directory alone");
        if v.header.event_type == EventType::KeyGranted {
            ring.ingest_grant(&v).expect("grant is well formed");
        } else {
            out.extend(ring.open(&v).sections.into_iter().map(|s| (s.name, s.plaintext)));
        }
    }
    out
}

#[test]
fn each_party_reads_exactly_its_sections() {
    let cast = Cast::new(1);
    let sealed = seal(&cast);
    let kinds: Vec<_> = sealed.iter().map(|e| e.header.event_type).collect();
    assert_eq!(
        kinds,
        [
            EventType::KeyGranted,
            EventType::KeyGranted,
            EventType::ReferralReceived
        ]
    );
    assert!(sealed[0].subject.as_str().starts_with("hru.key.police-hru.a"));
    assert!(
        sealed[2].subject.as_str().starts_with("hru.evt.")
            && sealed[2].subject.as_str().ends_with(".police-hru.ReferralReceived")
    );

    let pb::event_draft::Event::ReferralReceived(expected) = referral() else {
        unreachable!()
    };
    let police = read_as(&cast, &cast.police, &sealed);
    assert_eq!(
        police[0].1.as_deref().ok(),
        Some(expected.core.as_ref().expect("core").encode_to_vec().as_slice())
    );
    assert_eq!(
        police[1].1.as_deref().ok(),
        Some(expected.identity.as_ref().expect("identity").encode_to_vec().as_slice())
    );

    let probation = read_as(&cast, &cast.probation, &sealed);
    assert!(probation[0].1.is_ok(), "probation reads core");
    assert!(matches!(probation[1].1, Err(OpenError::NotInAudience { ref section, .. }) if section == "identity"));

    for reader in [&cast.cwp, &cast.mersey_care] {
        let seen = read_as(&cast, reader, &sealed);
        assert!(seen[0].1.is_ok());
        assert_eq!(seen[1].1.as_ref().map_err(OpenError::kind), Err("not-in-audience"));
    }

    let em = read_as(&cast, &cast.em_vendor, &sealed);
    assert!(
        em.iter()
            .all(|(_, r)| matches!(r, Err(OpenError::NotInAudience { .. }))),
        "{em:?}"
    );
}

#[test]
fn a_reader_without_the_grant_gets_missing_epoch_key() {
    let cast = Cast::new(2);
    let sealed = seal(&cast);
    let ring = KeyRing::new(&cast.probation);
    let v = verify(&sealed[2].bytes, &cast.directory).expect("verifies");
    let opened = ring.open(&v);
    assert!(
        opened
            .sections
            .iter()
            .all(|s| matches!(s.plaintext, Err(OpenError::MissingEpochKey { .. })))
    );
}

#[test]
fn epochs_are_reused_within_a_month_and_turn_with_it() {
    let cast = Cast::new(3);
    let policy = cast.referral_policy();
    let mut sealer = Sealer::new(
        hru_domain::ProducerId {
            party: cast.police.party.clone(),
            instance: "node-1".into(),
        },
        cast.police.signing.clone(),
    );
    let mut grants_at = |now: i64| {
        let (t, sections) = split_draft(referral());
        sealer
            .seal_event(
                CaseId::random(),
                t,
                sections,
                now,
                now,
                &policy,
                &cast.directory,
                &mut rand_core::OsRng,
            )
            .expect("seals")
            .iter()
            .filter(|e| e.header.event_type == EventType::KeyGranted)
            .count()
    };
    assert_eq!(grants_at(NOW), 2, "first use of two audiences");
    assert_eq!(grants_at(NOW + 60_000), 0, "same month: no new grant");
    assert_eq!(grants_at(NOW + 40 * 86_400_000), 2, "next month: both audiences turn");
}

#[test]
fn a_refused_section_seals_nothing_and_leaves_the_chain() {
    let cast = Cast::new(4);
    let mut sealer = Sealer::new(
        hru_domain::ProducerId {
            party: cast.police.party.clone(),
            instance: "node-1".into(),
        },
        cast.police.signing.clone(),
    );
    let (t, sections) = split_draft(pb::event_draft::Event::RiskAssessed(pb::RiskAssessed {
        summary: Some(pb::RiskSummary::default()),
        clinical: None,
    }));
    let err = sealer
        .seal_event(
            CaseId::random(),
            t,
            sections,
            NOW,
            NOW,
            &cast.referral_policy(),
            &cast.directory,
            &mut rand_core::OsRng,
        )
        .expect_err("no rule for RiskAssessed");
    assert!(err.to_string().contains("RiskAssessed.summary"), "{err}");
    assert_eq!(sealer.chain(), hru_envelope::ChainHead::GENESIS);
    assert!(sealer.epochs().is_empty());
}
