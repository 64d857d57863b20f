//! Erasure by period keys (decision 010): a member that kept a grant, its long-term secrets and
//! its key file can no longer open a section once its chain has moved past the section's
//! period; later periods and other classes still open; a month a member has not published is
//! granted on its long-term key rather than refused.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use hru_domain::{CaseId, split_draft};
use hru_envelope::fixture::Cast;
use hru_envelope::{
    GrantOutcome, KeyRing, OpenError, PartySecrets, PeriodKeys, SealError, SealedEnvelope, Sealer, month_at, verify,
};
use hru_wire::v1 as pb;
use rand::SeedableRng as _;

/// 2026-11-14 (UTC).
const NOW: i64 = 1_795_000_000_000;

fn referral() -> pb::event_draft::Event {
    pb::event_draft::Event::ReferralReceived(pb::ReferralReceived {
        core: Some(pb::ReferralCore {
            subject_ref: vec![9; 32],
            behaviours: vec![pb::Behaviour::Stalking as i32],
            area: "Cheshire East".into(),
            received_at_ms: NOW,
            ..Default::default()
        }),
        identity: None,
        narrative: None,
    })
}

fn seal(cast: &Cast, directory: &hru_envelope::Directory, at: i64) -> Result<Vec<SealedEnvelope>, SealError> {
    let mut sealer = Sealer::new(
        hru_domain::ProducerId {
            party: cast.police.party.clone(),
            instance: "node-1".into(),
        },
        cast.police.signing.clone(),
    );
    let (t, sections) = split_draft(referral());
    sealer.seal_event(
        CaseId::random(),
        t,
        sections,
        at,
        at,
        &cast.referral_policy().with_retention("90d"),
        directory,
        &mut rand_core::OsRng,
    )
}

/// What `reader` makes of the core section, from a ring built afresh from everything it keeps.
fn core_as(
    cast: &Cast,
    reader: &PartySecrets,
    periods: Option<&PeriodKeys>,
    envelopes: &[SealedEnvelope],
) -> Result<Vec<u8>, OpenError> {
    let mut ring = KeyRing::new(reader);
    if let Some(p) = periods {
        ring = ring.with_periods(p, "2027-12");
    }
    let mut core = None;
    for e in envelopes {
        let v = verify(&e.bytes, &cast.directory).expect("verifies");
        if v.header.event_type == hru_domain::EventType::KeyGranted {
            let outcome = ring.ingest_grant(&v)?;
            assert_ne!(outcome, GrantOutcome::NotAMember);
        } else {
            core = Some(ring.open(&v).sections.remove(0).plaintext);
        }
    }
    core.expect("the event")
}

fn ms(date: &str) -> i64 {
    date.parse::<jiff::Timestamp>().unwrap().as_millisecond()
}

#[test]
fn a_kept_grant_opens_nothing_once_the_members_chain_moved_past_its_period() {
    let cast = Cast::new(3);
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let month = month_at(NOW).unwrap();
    // Every member of the core audience publishes period keys for the coming months.
    let mut directory = cast.directory.clone();
    let mut chains = Vec::new();
    for member in [&cast.police, &cast.probation, &cast.cwp, &cast.mersey_care] {
        let mut p = PeriodKeys::new(member.party.clone());
        p.start("90d", &month, &mut rng).unwrap();
        p.start("7y", &month, &mut rng).unwrap();
        directory
            .add_period_keys(&member.party, p.publication(&month, 3))
            .unwrap();
        chains.push(p);
    }
    let envelopes = seal(&cast, &directory, NOW).expect("seals");
    let cwp_periods = &mut chains[2];
    assert!(
        core_as(&cast, &cast.cwp, Some(cwp_periods), &envelopes).is_ok(),
        "before expiry cwp reads it"
    );

    // 90 days after the end of November 2026: the chain moves past November.
    let destroyed = cwp_periods.destroy_expired(ms("2027-03-01T00:00:00Z"));
    assert_eq!(destroyed.len(), 1, "{destroyed:?}");
    // Everything cwp keeps: its long-term secrets (the same file as before) and its period file.
    let kept = PeriodKeys::from_toml(&cwp_periods.to_toml(), "cwp.periods").unwrap();
    match core_as(&cast, &cast.cwp, Some(&kept), &envelopes) {
        Err(OpenError::Erased { class, month, on, .. }) => {
            assert_eq!(
                (class.as_str(), month.as_str(), on.as_str()),
                ("90d", "2026-11", "2027-03-01")
            );
        }
        other => panic!("after expiry the kept grant must open nothing, got {other:?}"),
    }
    // The long-term key alone never opened it.
    assert!(matches!(
        core_as(&cast, &cast.cwp, None, &envelopes),
        Err(OpenError::GrantUnseal { .. })
    ));

    // A later month still seals and opens under the same chain.
    let later = seal(&cast, &directory, ms("2027-01-10T00:00:00Z")).expect("January is published");
    assert!(core_as(&cast, &cast.cwp, Some(&kept), &later).is_ok());
    // A month nobody published never stops the producer: the grant goes to each member's
    // long-term key (not erasable; `hru retention status` names it), and still opens.
    let unpublished = seal(&cast, &directory, ms("2027-06-10T00:00:00Z")).expect("seals");
    let grant = verify(&unpublished[0].bytes, &cast.directory).unwrap();
    let body: pb::KeyGranted = prost::Message::decode(grant.body.as_slice()).unwrap();
    let to_cwp = body.members.iter().find(|m| m.party == "cwp").unwrap();
    assert_eq!(to_cwp.key_id, cast.cwp.encryption_key_id().0.to_vec());
    assert!(core_as(&cast, &cast.cwp, None, &unpublished).is_ok());
}

#[test]
fn without_period_keys_a_kept_grant_opens_for_ever() {
    // The long-term key path, for members that publish no period keys: nothing they keep ever
    // expires. This is what `hru retention status` reports as not erasable.
    let cast = Cast::new(4);
    let envelopes = seal(&cast, &cast.directory, NOW).expect("seals");
    let mut ring = KeyRing::new(&cast.cwp);
    for e in &envelopes[..envelopes.len() - 1] {
        ring.ingest_grant(&verify(&e.bytes, &cast.directory).unwrap()).unwrap();
    }
    assert_eq!(ring.destroy_expired(ms("2030-01-01T00:00:00Z")).len(), 1);
    assert!(
        core_as(&cast, &cast.cwp, None, &envelopes).is_ok(),
        "a fresh ring from the long-term key opens the kept grant again"
    );
}
