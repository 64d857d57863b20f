//! Legal holds (decision 010): the section keys of one held event, granted under a one-month
//! hold key, open that event's sections past their epoch's retention and nothing else; they
//! die with the hold key's period; em-vendor, never given the epoch, gets nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use hru_domain::{AudienceId, CaseId, EventType, split_draft};
use hru_envelope::fixture::Cast;
use hru_envelope::{
    GrantOutcome, HOLD_CLASS, HeldEpoch, KeyRing, OpenError, PeriodKeys, SealedEnvelope, Sealer, StaticAudiences,
    VerifiedEnvelope, month_at, verify,
};
use hru_wire::v1 as pb;
use rand::SeedableRng as _;

/// 2026-11-14 (UTC).
const NOW: i64 = 1_795_000_000_000;

fn ms(date: &str) -> i64 {
    date.parse::<jiff::Timestamp>().unwrap().as_millisecond()
}

fn referral() -> pb::event_draft::Event {
    pb::event_draft::Event::ReferralReceived(pb::ReferralReceived {
        core: Some(pb::ReferralCore {
            subject_ref: vec![9; 32],
            area: "Cheshire East".into(),
            received_at_ms: NOW,
            ..Default::default()
        }),
        identity: None,
        narrative: None,
    })
}

struct World {
    cast: Cast,
    directory: hru_envelope::Directory,
    policy: StaticAudiences,
    cwp: PeriodKeys,
    sealer: Sealer,
}

impl World {
    /// The core audience's members publish 90-day and hold-class keys from November 2026.
    fn new() -> Self {
        let cast = Cast::new(7);
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let month = month_at(NOW).unwrap();
        let mut directory = cast.directory.clone();
        let mut cwp = None;
        for member in [&cast.police, &cast.probation, &cast.cwp, &cast.mersey_care] {
            let mut p = PeriodKeys::new(member.party.clone());
            p.start("90d", &month, &mut rng).unwrap();
            p.start(HOLD_CLASS, &month, &mut rng).unwrap();
            directory
                .add_period_keys(&member.party, p.publication(&month, 6))
                .unwrap();
            if member.party == cast.cwp.party {
                cwp = Some(p);
            }
        }
        let policy = cast.referral_policy().with_retention("90d");
        let sealer = Sealer::new(
            hru_domain::ProducerId {
                party: cast.police.party.clone(),
                instance: "node-1".into(),
            },
            cast.police.signing.clone(),
        );
        Self {
            cast,
            directory,
            policy,
            cwp: cwp.unwrap(),
            sealer,
        }
    }

    fn seal(&mut self, case: CaseId) -> Vec<SealedEnvelope> {
        let (t, sections) = split_draft(referral());
        self.sealer
            .seal_event(
                case,
                t,
                sections,
                NOW,
                NOW,
                &self.policy,
                &self.directory,
                &mut rand_core::OsRng,
            )
            .unwrap()
    }

    fn verified(&self, e: &SealedEnvelope) -> VerifiedEnvelope {
        verify(&e.bytes, &self.cast.directory).unwrap()
    }
}

#[test]
fn a_held_grant_opens_the_held_event_alone_until_its_month_ends() {
    let mut w = World::new();
    let held_case = CaseId::random();
    let held = w.seal(held_case);
    let other = w.seal(CaseId::random());
    assert_eq!(other.len(), 1, "the second referral reuses the epoch");
    let event = w.verified(held.last().unwrap());
    let (slot, state) = w
        .sealer
        .epochs()
        .iter()
        .next()
        .map(|(s, e)| (s.clone(), e.clone()))
        .unwrap();
    let audience: AudienceId = slot.0;

    // The producer keeps the held event's section keys, and only its own event's.
    let keys = w.sealer.held_keys(&audience, &state, &event);
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].name, "core");
    assert!(w.sealer.held_keys(&audience, &state, &w.verified(&other[0])).len() == 1);
    let members: Vec<_> = state.members.iter().map(|(p, _)| p.clone()).collect();
    let case = held_case.to_string();
    let hold = HeldEpoch {
        hold: "0b9c54f2-6a5e-4d8c-9c1f-3f3e2a1d9b7a",
        case: &case,
        audience: &audience,
        epoch: state.epoch,
        epoch_retention: &state.retention,
        epoch_month: &state.month,
        members: &members,
    };
    // Granted in February 2027, after the epoch's 90 days ended (2027-03-01 is its expiry;
    // a producer grants before it destroys).
    let grant = w
        .sealer
        .prepare_held(
            &hold,
            &keys,
            &w.directory,
            ms("2027-02-20T00:00:00Z"),
            &w.policy,
            &mut rand_core::OsRng,
        )
        .unwrap();
    assert!(grant.1.is_empty(), "every member published a February hold key");
    let grant = w.verified(&grant.0.envelopes[0]);
    assert_eq!(grant.header.event_type, EventType::KeyGranted);

    // cwp, its chains moved past November 2026 in March 2027: the epoch's grant is erased, the
    // held grant opens the held referral's core, and the other referral stays erased.
    let ring_at = |at: &str| {
        let mut periods = PeriodKeys::from_toml(&w.cwp.to_toml(), "cwp.periods").unwrap();
        periods.destroy_expired(ms(at));
        let mut ring = KeyRing::new(&w.cast.cwp).with_periods(&periods, "2027-12");
        ring.destroy_expired(ms(at));
        ring
    };
    let mut ring = ring_at("2027-03-05T00:00:00Z");
    assert_eq!(ring.ingest_grant(&w.verified(&held[0])).unwrap(), GrantOutcome::Erased);
    assert_eq!(ring.ingest_grant(&grant).unwrap(), GrantOutcome::Held);
    let opened = ring.open(&event).sections.remove(0);
    assert!(opened.plaintext.is_ok(), "{opened:?}");
    assert_eq!(opened.held.as_deref(), Some(hold.hold));
    let not_held = ring.open(&w.verified(&other[0])).sections.remove(0);
    assert!(
        matches!(not_held.plaintext, Err(OpenError::Erased { .. })),
        "{not_held:?}"
    );
    assert_eq!(not_held.held, None);
    assert_eq!(ring.holds().get(hold.hold), Some(&1));

    // Once the hold key's month has ended (February's one-month class ends 2027-04-01), the
    // held grant opens nothing, whether the ring was swept or built afresh.
    ring.destroy_expired(ms("2027-04-02T00:00:00Z"));
    assert!(matches!(
        ring.open(&event).sections.remove(0).plaintext,
        Err(OpenError::Erased { .. })
    ));
    let mut late = ring_at("2027-04-02T00:00:00Z");
    late.ingest_grant(&w.verified(&held[0])).unwrap();
    assert_eq!(late.ingest_grant(&grant).unwrap(), GrantOutcome::Erased);
    assert!(late.holds().is_empty());

    // A member with no hold key for the month is left out, never sealed to its long-term key.
    let mut sparse = w.cast.directory.clone();
    let mut rng = rand::rngs::StdRng::seed_from_u64(8);
    let mut police = PeriodKeys::new(w.cast.police.party.clone());
    police.start(HOLD_CLASS, "2027-02", &mut rng).unwrap();
    sparse
        .add_period_keys(&w.cast.police.party, police.publication("2027-02", 1))
        .unwrap();
    let (only_police, left_out) = w
        .sealer
        .prepare_held(
            &hold,
            &keys,
            &sparse,
            ms("2027-02-20T00:00:00Z"),
            &w.policy,
            &mut rand_core::OsRng,
        )
        .unwrap();
    assert_eq!(left_out.len(), members.len() - 1);
    let body: pb::KeyGranted = prost::Message::decode(w.verified(&only_police.envelopes[0]).body.as_slice()).unwrap();
    assert_eq!(body.members.len(), 1);
    assert_eq!(body.members[0].party, "police-hru");

    // A party never given the epoch is not in the held grant either.
    let mut vendor = KeyRing::new(&w.cast.em_vendor);
    assert_eq!(vendor.ingest_grant(&grant).unwrap(), GrantOutcome::NotAMember);
}
