//! The tamper matrix: every single-byte change, swapped and renamed sections, foreign signing
//! keys and misaddressed key grants are each refused with their specific error.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use hru_domain::{CaseId, EventType, ProducerId, split_draft};
use hru_envelope::fixture::{Cast, party_secrets, resign};
use hru_envelope::{KeyRing, OpenError, SealedEnvelope, Sealer, key_id, verify};
use hru_wire::v1 as pb;
use proptest::prelude::*;
use prost::Message as _;

const NOW: i64 = 1_795_000_000_000;

fn referral(n: u8) -> pb::event_draft::Event {
    pb::event_draft::Event::ReferralReceived(pb::ReferralReceived {
        core: Some(pb::ReferralCore {
            subject_ref: vec![n; 32],
            behaviours: vec![pb::Behaviour::Stalking as i32],
            area: "Cheshire West".into(),
            received_at_ms: NOW,
            out_of_hours: false,
            crime_reference: String::new(),
        }),
        identity: Some(pb::ReferralIdentity {
            subject: Some(pb::PersonIdentity {
                full_name: format!("Person {n}"),
                ..Default::default()
            }),
            victim: None,
        }),
        narrative: Some(pb::ReferralNarrative {
            text: format!("account {n}"),
        }),
    })
}

/// Two grants-bearing rounds: [grant core, grant identity, grant narrative, event 1, event 2].
fn sealed(cast: &Cast) -> Vec<SealedEnvelope> {
    let mut sealer = Sealer::new(police(cast), cast.police.signing.clone());
    let mut out = Vec::new();
    for n in 1..=2 {
        let (t, s) = split_draft(referral(n));
        out.extend(
            sealer
                .seal_event(
                    CaseId::random(),
                    t,
                    s,
                    NOW,
                    NOW,
                    &cast.referral_policy(),
                    &cast.directory,
                    &mut rand_core::OsRng,
                )
                .expect("seals"),
        );
    }
    out
}

fn police(cast: &Cast) -> ProducerId {
    ProducerId {
        party: cast.police.party.clone(),
        instance: "node-1".into(),
    }
}

fn decode(bytes: &[u8]) -> pb::Envelope {
    pb::Envelope::decode(bytes).expect("decodes")
}

/// Kinds a corrupted envelope may be refused with, before any key is used.
const CORRUPTION_KINDS: &[&str] = &["malformed", "bad-signature", "unknown-signing-key", "key-not-valid"];

#[test]
fn every_single_byte_change_is_refused() {
    let cast = Cast::new(11);
    let mut tried = 0;
    for env in sealed(&cast) {
        for pos in 0..env.bytes.len() {
            for mask in [0x01u8, 0x80, 0xff] {
                let mut bytes = env.bytes.clone();
                bytes[pos] ^= mask;
                let err = verify(&bytes, &cast.directory).expect_err("a changed byte never verifies");
                assert!(CORRUPTION_KINDS.contains(&err.kind()), "byte {pos} ^ {mask:#x}: {err}");
                tried += 1;
            }
        }
    }
    assert!(tried > 3_000, "covered {tried} mutations");
}

#[test]
fn changes_inside_signed_content_are_bad_signatures() {
    let cast = Cast::new(12);
    let env = sealed(&cast).remove(3);
    let wire = decode(&env.bytes);
    // A flip inside ciphertext, nonce or signature keeps the encoding valid: only the signature catches it.
    let mut c = wire.clone();
    c.sections[0].ciphertext[5] ^= 1;
    let mut n = wire.clone();
    n.sections[1].nonce[0] ^= 1;
    let mut s = wire.clone();
    s.signature[10] ^= 1;
    for (what, e) in [("ciphertext", c), ("nonce", n), ("signature", s)] {
        let err = verify(&e.encode_to_vec(), &cast.directory).expect_err(what);
        assert_eq!(err.kind(), "bad-signature", "{what}: {err}");
    }
}

#[test]
fn swapping_sections_between_events_is_refused() {
    let cast = Cast::new(13);
    let all = sealed(&cast);
    let (a, b) = (decode(&all[3].bytes), decode(&all[4].bytes));
    let mut swapped = a.clone();
    swapped.sections[0] = b.sections[0].clone();
    // Without the producer's key: the signature no longer covers the content.
    let err = verify(&swapped.encode_to_vec(), &cast.directory).expect_err("unsigned swap");
    assert_eq!(err.kind(), "bad-signature");
    // Even re-signed by the producer, the section does not decrypt under another event's header.
    let resigned = resign(&swapped, &cast.police.signing);
    let v = verify(&resigned, &cast.directory).expect("re-signed by the real key");
    let mut ring = KeyRing::new(&cast.probation);
    for g in &all[..3] {
        ring.ingest_grant(&verify(&g.bytes, &cast.directory).expect("grant"))
            .expect("ingests");
    }
    let opened = ring.open(&v);
    assert!(
        matches!(opened.sections[0].plaintext, Err(OpenError::SectionDecrypt { ref section }) if section == "core")
    );
}

#[test]
fn moving_a_section_under_another_name_is_refused() {
    let cast = Cast::new(14);
    let all = sealed(&cast);
    let mut moved = decode(&all[3].bytes);
    // narrative (police + cwp) relabelled as... its audience stays, the name changes.
    let idx = moved
        .sections
        .iter()
        .position(|s| s.name == "narrative")
        .expect("narrative");
    moved.sections.retain(|s| s.name != "identity");
    let idx = if idx > 1 { idx - 1 } else { idx };
    moved.sections[idx].name = "identity".into();
    assert_eq!(
        verify(&moved.encode_to_vec(), &cast.directory)
            .map_err(|e| e.kind())
            .err(),
        Some("bad-signature")
    );
    let v = verify(&resign(&moved, &cast.police.signing), &cast.directory).expect("re-signed");
    let mut ring = KeyRing::new(&cast.cwp);
    for g in &all[..3] {
        ring.ingest_grant(&verify(&g.bytes, &cast.directory).expect("grant"))
            .expect("ingests");
    }
    let opened = ring.open(&v);
    let renamed = opened
        .sections
        .iter()
        .find(|s| s.name == "identity")
        .expect("renamed section");
    assert!(
        matches!(renamed.plaintext, Err(OpenError::SectionDecrypt { .. })),
        "{:?}",
        renamed.plaintext
    );
}

#[test]
fn a_key_outside_the_directory_is_refused() {
    let cast = Cast::new(15);
    let env = decode(&sealed(&cast)[3].bytes);
    let intruder = party_secrets("police-hru", 99);
    // Same header (names police's key id), intruder's signature.
    let err = verify(&resign(&env, &intruder.signing), &cast.directory).expect_err("wrong key");
    assert_eq!(err.kind(), "bad-signature");
    // Header rewritten to name the intruder's key id.
    let mut header = pb::EventHeader::decode(env.header.as_slice()).expect("header");
    header.key_id = key_id(intruder.signing.verifying_key().as_bytes()).0.to_vec();
    let forged = pb::Envelope {
        header: header.encode_to_vec(),
        ..env
    };
    let err = verify(&resign(&forged, &intruder.signing), &cast.directory).expect_err("unknown key");
    assert_eq!(err.kind(), "unknown-signing-key", "{err}");
}

#[test]
fn a_key_grant_for_one_party_does_not_open_for_another() {
    let cast = Cast::new(16);
    let all = sealed(&cast);
    // The identity grant (police only) given to probation: it learns it is not a member.
    let identity_grant = verify(&all[1].bytes, &cast.directory).expect("grant");
    let mut ring = KeyRing::new(&cast.probation);
    assert_eq!(
        ring.ingest_grant(&identity_grant),
        Ok(hru_envelope::GrantOutcome::NotAMember)
    );

    // probation's sealed entry relabelled as cwp's, even re-signed by the producer: cwp cannot unseal it.
    let mut env = decode(&all[0].bytes);
    let mut grant = pb::KeyGranted::decode(env.body.as_slice()).expect("grant body");
    let probation = grant
        .members
        .iter()
        .find(|m| m.party == "probation")
        .cloned()
        .expect("probation entry");
    let cwp = grant.members.iter_mut().find(|m| m.party == "cwp").expect("cwp entry");
    cwp.enc = probation.enc;
    cwp.sealed_epoch_key = probation.sealed_epoch_key;
    env.body = grant.encode_to_vec();
    assert_eq!(
        verify(&env.encode_to_vec(), &cast.directory)
            .map_err(|e| e.kind())
            .err(),
        Some("bad-signature")
    );
    let v = verify(&resign(&env, &cast.police.signing), &cast.directory).expect("re-signed");
    let err = KeyRing::new(&cast.cwp)
        .ingest_grant(&v)
        .expect_err("misaddressed entry");
    assert!(
        matches!(err, OpenError::GrantUnseal { ref party, .. } if party.as_str() == "cwp"),
        "{err}"
    );

    // An entry for another producer's epoch (same bytes, grant claims another audience) does not unseal either.
    let mut env = decode(&all[0].bytes);
    let mut grant = pb::KeyGranted::decode(env.body.as_slice()).expect("grant body");
    grant.epoch += 1;
    env.body = grant.encode_to_vec();
    let v = verify(&resign(&env, &cast.police.signing), &cast.directory).expect("re-signed");
    assert_eq!(
        KeyRing::new(&cast.probation).ingest_grant(&v).map_err(|e| e.kind()),
        Err("grant-unseal")
    );
}

#[test]
fn a_grant_signed_by_someone_else_than_its_producer_is_refused() {
    let cast = Cast::new(17);
    let all = sealed(&cast);
    let mut env = decode(&all[0].bytes);
    let mut grant = pb::KeyGranted::decode(env.body.as_slice()).expect("grant body");
    grant.producer = "probation".into();
    env.body = grant.encode_to_vec();
    let v = verify(&resign(&env, &cast.police.signing), &cast.directory).expect("re-signed");
    assert_eq!(
        KeyRing::new(&cast.probation).ingest_grant(&v).map_err(|e| e.kind()),
        Err("malformed")
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Random corruption of 1..=4 bytes anywhere never verifies.
    #[test]
    fn random_corruption_never_verifies(which in 0usize..5, edits in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..=4)) {
        let cast = fixture();
        let env = &cast.1[which];
        let mut bytes = env.bytes.clone();
        for (at, mask) in &edits {
            let i = at.index(bytes.len());
            bytes[i] ^= mask;
        }
        prop_assume!(bytes != env.bytes);
        let err = verify(&bytes, &cast.0.directory).expect_err("corrupted");
        prop_assert!(CORRUPTION_KINDS.contains(&err.kind()), "{}", err);
    }
}

fn fixture() -> &'static (Cast, Vec<SealedEnvelope>) {
    static F: std::sync::OnceLock<(Cast, Vec<SealedEnvelope>)> = std::sync::OnceLock::new();
    F.get_or_init(|| {
        let cast = Cast::new(18);
        let s = sealed(&cast);
        (cast, s)
    })
}

#[test]
fn fixture_kinds() {
    let kinds: Vec<EventType> = fixture().1.iter().map(|e| e.header.event_type).collect();
    assert_eq!(kinds[..3], [EventType::KeyGranted; 3]);
    assert_eq!(kinds[3..], [EventType::ReferralReceived; 2]);
}
