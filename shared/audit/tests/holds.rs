//! Legal holds in the audit (decision 010): a hold's grant made while its hold stands, to
//! parties the epoch was granted to, is no finding; one for a hold never placed, one made after
//! the release, one reaching a party never given the epoch, and a release signed by another
//! party than the placer are each a `bad-hold`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use hru_audit::{Auditor, FindingKind};
use hru_domain::{CaseId, EventType, PartyId, ProducerId, split_draft};
use hru_envelope::fixture::Cast;
use hru_envelope::{HeldEpoch, SealedBatch, Sealer, StaticAudiences, verify};
use hru_policy::PolicySet;
use hru_wire::v1 as pb;
use prost::Message as _;

const T: i64 = 1_800_000_000_000;
const HOLD: &str = "5d7c6a1e-2b3f-4c8d-9e0a-1b2c3d4e5f60";

type Entry = (String, Vec<u8>);

fn take(sealer: &mut Sealer, batch: SealedBatch) -> Vec<Entry> {
    sealer.commit(&batch, batch.envelopes.len());
    batch
        .envelopes
        .into_iter()
        .map(|e| (e.subject.to_string(), e.bytes))
        .collect()
}

fn public(sealer: &mut Sealer, t: EventType, body: Vec<u8>) -> Entry {
    let batch = sealer
        .prepare_public(t, body, T, &StaticAudiences::new("example", 1))
        .unwrap();
    take(sealer, batch).remove(0)
}

/// Findings of `kind` in the audit over `log`, as of `now` (retention and reviews judged then).
fn findings(cast: &Cast, log: &[Entry], kind: FindingKind, now: i64) -> usize {
    let policies = PolicySet::default();
    let mut auditor = Auditor::new(&cast.directory, &policies);
    auditor.require_destruction(now, hru_audit::DESTRUCTION_GRACE_MS);
    for (i, (subject, bytes)) in log.iter().enumerate() {
        auditor.observe(i as u64 + 1, subject, bytes, hru_broker::StoredAt::Unknown);
    }
    auditor.finish().findings.iter().filter(|f| f.kind == kind).count()
}

/// Bad-hold findings of the audit over `log`.
fn bad_holds(cast: &Cast, log: &[Entry]) -> usize {
    findings(cast, log, FindingKind::BadHold, T)
}

#[test]
fn a_hold_grant_needs_a_standing_hold_and_the_epochs_members() {
    let cast = Cast::new(21);
    let policy = cast.referral_policy();
    let producer = ProducerId {
        party: cast.police.party.clone(),
        instance: "node-1".into(),
    };
    let mut police = Sealer::new(producer, cast.police.signing.clone());
    let mut probation = Sealer::new(
        ProducerId {
            party: cast.probation.party.clone(),
            instance: "node-1".into(),
        },
        cast.probation.signing.clone(),
    );
    let case = CaseId::random();
    let (t, sections) = split_draft(pb::event_draft::Event::ReferralReceived(pb::ReferralReceived {
        core: Some(pb::ReferralCore {
            area: "Cheshire East".into(),
            ..Default::default()
        }),
        ..Default::default()
    }));
    let sealed = police
        .seal_event(case, t, sections, T, T, &policy, &cast.directory, &mut rand_core::OsRng)
        .unwrap();
    // The grant only: the event itself is not under an agreement this auditor holds.
    let grant = (sealed[0].subject.to_string(), sealed[0].bytes.clone());
    let event = verify(&sealed[1].bytes, &cast.directory).unwrap();
    let (slot, state) = police
        .epochs()
        .iter()
        .next()
        .map(|(s, e)| (s.clone(), e.clone()))
        .unwrap();
    let keys = police.held_keys(&slot.0, &state, &event);
    let case_text = case.to_string();
    // Every party publishes a hold key for the month: holds' grants go only to those.
    let mut sealing = cast.directory.clone();
    let month = hru_envelope::month_at(T).unwrap();
    for party in [
        &cast.police,
        &cast.probation,
        &cast.cwp,
        &cast.mersey_care,
        &cast.em_vendor,
    ] {
        let mut keys = hru_envelope::PeriodKeys::new(party.party.clone());
        keys.start(hru_envelope::HOLD_CLASS, &month, &mut rand_core::OsRng)
            .unwrap();
        sealing
            .add_period_keys(&party.party, keys.publication(&month, 1))
            .unwrap();
    }
    let given: Vec<PartyId> = state.members.iter().map(|(p, _)| p.clone()).collect();
    let held_grant = |sealer: &mut Sealer, members: &[PartyId]| {
        let hold = HeldEpoch {
            hold: HOLD,
            case: &case_text,
            audience: &slot.0,
            epoch: state.epoch,
            epoch_retention: &state.retention,
            epoch_month: &state.month,
            members,
        };
        let (batch, _) = sealer
            .prepare_held(&hold, &keys, &sealing, T, &policy, &mut rand_core::OsRng)
            .unwrap();
        take(sealer, batch).remove(0)
    };
    let placed = pb::LegalHoldPlaced {
        hold: HOLD.into(),
        case_id: case_text.clone(),
        reason: "proceedings".into(),
        authority: "CPS".into(),
        review_date: "2027-06-30".into(),
    };
    let released = pb::LegalHoldReleased {
        hold: HOLD.into(),
        case_id: case_text.clone(),
        reason: "concluded".into(),
    };
    let place = public(&mut police, EventType::LegalHoldPlaced, placed.encode_to_vec());

    // Standing, to the epoch's members: clean.
    let clean = vec![grant.clone(), place.clone(), held_grant(&mut police, &given)];
    assert_eq!(bad_holds(&cast, &clean), 0);

    // No hold placed.
    let unplaced = vec![grant.clone(), held_grant(&mut police, &given)];
    assert_eq!(bad_holds(&cast, &unplaced), 1);

    // To a party never given the epoch.
    let mut wider = given.clone();
    wider.push(cast.em_vendor.party.clone());
    let reaching = vec![grant.clone(), place.clone(), held_grant(&mut police, &wider)];
    assert_eq!(bad_holds(&cast, &reaching), 1);

    // Released by another party (not honoured), then by the placer, then granted again.
    let foreign = public(&mut probation, EventType::LegalHoldReleased, released.encode_to_vec());
    let release = public(&mut police, EventType::LegalHoldReleased, released.encode_to_vec());
    let after = vec![
        grant,
        place,
        foreign,
        held_grant(&mut police, &given),
        release,
        held_grant(&mut police, &given),
    ];
    assert_eq!(
        bad_holds(&cast, &after),
        2,
        "the foreign release and the grant after release"
    );

    // A hold id that is not a canonical UUID is refused.
    let shouting = pb::LegalHoldPlaced {
        hold: HOLD.to_uppercase(),
        ..placed.clone()
    };
    let upper = public(&mut police, EventType::LegalHoldPlaced, shouting.encode_to_vec());
    assert_eq!(bad_holds(&cast, &[upper]), 1);

    // A standing hold past its review date is a finding; released, it is not.
    let review_passed = T + 200 * 86_400_000;
    let standing = vec![after[1].clone()];
    assert_eq!(
        findings(&cast, &standing, FindingKind::HoldReviewOverdue, review_passed),
        1
    );
    assert_eq!(findings(&cast, &standing, FindingKind::HoldReviewOverdue, T), 0);
    let done = vec![after[1].clone(), after[4].clone()];
    assert_eq!(findings(&cast, &done, FindingKind::HoldReviewOverdue, review_passed), 0);
}
