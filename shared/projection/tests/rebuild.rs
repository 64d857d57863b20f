//! A projection folded live, batch by batch and across restarts, has the same digest as a
//! clean rebuild of the same log: 10k mixed events over 500 cases.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use hru_domain::{CaseId, EventType, ProducerId, split_draft};
use hru_envelope::fixture::Cast;
use hru_envelope::{KeyRing, Sealer, StaticAudiences};
use hru_projection::{CaseBoard, Projector, Store, screening_queue};
use hru_reader::ReadPath;
use hru_wire::v1 as pb;

const T0: i64 = 1_795_000_000_000;

/// Every case section shared with police alone.
fn policy(cast: &Cast) -> StaticAudiences {
    let me = std::slice::from_ref(&cast.police.party);
    let mut policy = StaticAudiences::new("board", 1);
    for t in EventType::ALL.iter().filter(|t| t.has_case()) {
        for s in t.sections() {
            policy = policy.share(*t, s, me);
        }
    }
    policy
}

fn log_of(cast: &Cast, n: usize) -> Vec<(u64, String, Vec<u8>)> {
    let policy = policy(cast);
    let mut sealer = Sealer::new(
        ProducerId {
            party: cast.police.party.clone(),
            instance: "n1".into(),
        },
        cast.police.signing.clone(),
    );
    let cases: Vec<CaseId> = (0..500).map(|_| CaseId::random()).collect();
    let mut out = Vec::new();
    let mut seq = 0;
    for i in 0..n {
        let case = cases[i % cases.len()];
        let at = T0 + i as i64 * 1_000;
        let id16 = |b: u8| vec![b; 16];
        let event = match (i / cases.len()) % 6 {
            0 => pb::event_draft::Event::ReferralReceived(pb::ReferralReceived {
                core: Some(pb::ReferralCore {
                    subject_ref: vec![(i % 251) as u8; 32],
                    behaviours: vec![if i % 3 == 0 {
                        pb::Behaviour::DomesticAbuse
                    } else {
                        pb::Behaviour::Stalking
                    } as i32],
                    area: "Warrington".into(),
                    received_at_ms: at,
                    out_of_hours: i % 2 == 0,
                    crime_reference: String::new(),
                }),
                identity: None,
                narrative: None,
            }),
            1 => pb::event_draft::Event::ScreeningCompleted(pb::ScreeningCompleted {
                core: Some(pb::ScreeningCore {
                    primacy_taken: i % 4 != 0,
                    criteria: vec!["FOUR".into()],
                    rationale: "fixated".into(),
                }),
                figures: None,
            }),
            2 => pb::event_draft::Event::RiskAssessed(pb::RiskAssessed {
                summary: Some(pb::RiskSummary {
                    tool: "SRP".into(),
                    violence: 2,
                    persistence: 3,
                    recurrence: 3,
                    psychosocial_harm: 2,
                    escalation: 1,
                    overall: 1 + (i % 4) as i32,
                    assessed_at_ms: at,
                }),
                clinical: None,
            }),
            3 => pb::event_draft::Event::OrderIssued(pb::OrderIssued {
                core: Some(pb::OrderCore {
                    order_id: id16(3),
                    kind: 1,
                    conditions: vec![],
                    tag_required: true,
                    issued_at_ms: at,
                    expires_at_ms: at + 1,
                }),
            }),
            4 => pb::event_draft::Event::TagBreach(pb::TagBreach {
                core: Some(pb::BreachCore {
                    breach_id: id16((i % 7) as u8),
                    tag_id: "tag-1".into(),
                    kind: 1,
                    state: if i % 5 == 0 { 3 } else { 1 },
                    rule_id: id16(9),
                    opened_at_ms: at,
                    observed_at_ms: at,
                    position: Some(pb::LatLon { lat: 53.1, lon: -2.4 }),
                    accuracy_m: 5.0,
                    distance_m: 12.0,
                    late: false,
                    evidence: None,
                }),
            }),
            _ => pb::event_draft::Event::CaseClosed(pb::CaseClosed {
                core: Some(pb::CaseClosedCore {
                    reason: "resolved".into(),
                    closed_at_ms: at,
                }),
            }),
        };
        let (t, sections) = split_draft(event);
        for e in sealer
            .seal_event(
                case,
                t,
                sections,
                at,
                at,
                &policy,
                &cast.directory,
                &mut rand_core::OsRng,
            )
            .unwrap()
        {
            seq += 1;
            out.push((seq, e.subject.to_string(), e.bytes));
        }
    }
    out
}

fn projector(store: Store, cast: &Cast) -> Projector {
    let read = ReadPath::new(
        cast.directory.clone(),
        std::sync::Arc::new(policy(cast)),
        KeyRing::new(&cast.police),
    );
    Projector::new(store, vec![Box::new(CaseBoard)], read).unwrap()
}

fn feed(p: &mut Projector, entries: &[(u64, String, Vec<u8>)]) {
    let refs: Vec<hru_projection::LogItem<'_>> = entries
        .iter()
        .map(|(s, subject, b)| (*s, subject.as_str(), b.as_slice(), hru_reader::StoredAt::Unknown))
        .collect();
    let refused = p.feed(&refs).unwrap();
    assert!(refused.is_empty(), "a genuine log is read whole: {refused:?}");
}

#[test]
fn live_folding_across_restarts_equals_a_clean_rebuild() {
    let cast = Cast::new(71);
    let log = log_of(&cast, 10_000);
    let dir = tempfile::tempdir().unwrap();

    // Live: uneven batches, and a restart every 2,000 entries (the key ring starts empty
    // again and is refilled from the log's start; folded events are not folded twice).
    let live_path = dir.path().join("live");
    let mut fed = 0;
    let sizes = [1usize, 7, 64, 333, 1000];
    let mut k = 0;
    while fed < log.len() {
        let mut p = projector(Store::open(&live_path).unwrap(), &cast);
        let restart_at = (fed + 2_000).min(log.len());
        feed(&mut p, &log[..fed]); // replays grants; the checkpoint skips folded events
        while fed < restart_at {
            let n = sizes[k % sizes.len()].min(restart_at - fed);
            feed(&mut p, &log[fed..fed + n]);
            fed += n;
            k += 1;
        }
        p.store.flush().unwrap();
    }
    let live = Store::open(&live_path).unwrap();
    let live_digest = live.digest(&CaseBoard).unwrap();

    // Rebuild: wipe, then the whole log in one pass.
    live.wipe(&CaseBoard).unwrap();
    let mut p = projector(live, &cast);
    assert_eq!(p.resume_from(), 1, "a wiped projection starts from the beginning");
    feed(&mut p, &log);
    let rebuilt_digest = p.store.digest(&CaseBoard).unwrap();
    assert_eq!(
        hex::encode(live_digest),
        hex::encode(rebuilt_digest),
        "live state equals a clean rebuild"
    );

    let rows = CaseBoard::rows(&p.store).unwrap();
    assert_eq!(rows.len(), 500);
    assert!(rows.iter().all(|r| r.closed && r.screened && r.risk_level.is_some()));
}

#[test]
fn the_screening_queue_holds_unscreened_stalking_referrals_and_marks_them_overdue_after_a_day() {
    let cast = Cast::new(72);
    let log = log_of(&cast, 500); // referrals only (the first 500 events)
    let dir = tempfile::tempdir().unwrap();
    let mut p = projector(Store::open(dir.path()).unwrap(), &cast);
    feed(&mut p, &log);
    let now = T0 + 500 * 1_000;
    let queue = screening_queue(&p.store, now).unwrap();
    let stalking = (0..500).filter(|i| i % 3 != 0).count();
    assert_eq!(queue.len(), stalking);
    let first_in_hours = queue.iter().position(|q| !q.out_of_hours).unwrap();
    assert!(
        queue[..first_in_hours].iter().all(|q| q.out_of_hours),
        "out-of-hours referrals first"
    );
    let later = screening_queue(&p.store, now + 2 * 86_400_000).unwrap();
    assert_eq!(later.len(), stalking, "not screened in 24 h: still on the queue");
    assert!(later.iter().all(|q| q.overdue), "and overdue");
}
