//! The chain checker names every break in a producer's chain: drops, duplicates, reorders, forks.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use hru_domain::{CaseId, ProducerId, split_draft};
use hru_envelope::fixture::Cast;
use hru_envelope::{ChainBreak, ChainChecker, Sealer, VerifiedEnvelope, verify};
use hru_wire::v1 as pb;

const NOW: i64 = 1_795_000_000_000;

fn chain(cast: &Cast, n: usize) -> Vec<VerifiedEnvelope> {
    let producer = ProducerId {
        party: cast.police.party.clone(),
        instance: "node-1".into(),
    };
    let mut sealer = Sealer::new(producer, cast.police.signing.clone());
    let mut out = Vec::new();
    while out.len() < n {
        let (t, s) = split_draft(pb::event_draft::Event::ReferralReceived(pb::ReferralReceived {
            core: Some(pb::ReferralCore {
                area: "Halton".into(),
                ..Default::default()
            }),
            identity: None,
            narrative: None,
        }));
        for e in sealer
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
            .expect("seals")
        {
            out.push(verify(&e.bytes, &cast.directory).expect("verifies"));
        }
    }
    out.truncate(n);
    out
}

fn breaks(log: &[&VerifiedEnvelope]) -> Vec<ChainBreak> {
    let mut checker = ChainChecker::new();
    log.iter()
        .filter_map(|e| checker.observe(&e.header, &e.digest).err())
        .collect()
}

fn seqs(b: &[ChainBreak]) -> Vec<String> {
    b.iter()
        .map(|b| match b {
            ChainBreak::Gap { expected, found, .. } => format!("gap {expected}->{found}"),
            ChainBreak::Duplicate { seq, .. } => format!("duplicate {seq}"),
            ChainBreak::OutOfOrder { expected, found, .. } => format!("out-of-order {found} (expected {expected})"),
            ChainBreak::Forked { seq, .. } => format!("fork {seq}"),
            ChainBreak::Unlinked { seq, .. } => format!("unlinked {seq}"),
        })
        .collect()
}

#[test]
fn an_intact_chain_has_no_breaks() {
    let cast = Cast::new(21);
    let log = chain(&cast, 8);
    assert!(breaks(&log.iter().collect::<Vec<_>>()).is_empty());
    assert_eq!(
        log.iter().map(|e| e.header.producer_seq).collect::<Vec<_>>(),
        (1..=8).collect::<Vec<_>>()
    );
}

#[test]
fn drop_duplicate_and_reorder_are_each_named() {
    let cast = Cast::new(22);
    let log = chain(&cast, 8);
    let l: Vec<&VerifiedEnvelope> = log.iter().collect();

    let dropped: Vec<_> = l.iter().enumerate().filter(|(i, _)| *i != 4).map(|(_, e)| *e).collect();
    assert_eq!(seqs(&breaks(&dropped)), ["gap 5->6"]);

    let mut duplicated = l.clone();
    duplicated.insert(3, l[2]);
    assert_eq!(seqs(&breaks(&duplicated)), ["duplicate 3"]);

    let mut reordered = l.clone();
    reordered.swap(5, 6);
    assert_eq!(seqs(&breaks(&reordered)), ["gap 6->7", "out-of-order 6 (expected 8)"]);

    let mut late_replay = l.clone();
    late_replay.push(l[1]);
    assert_eq!(seqs(&breaks(&late_replay)), ["duplicate 2"]);
}

#[test]
fn a_forked_history_is_named() {
    let cast = Cast::new(23);
    let a = chain(&cast, 4);
    let b = chain(&cast, 4); // same producer, same seqs, different envelopes
    let log = [&a[0], &a[1], &a[2], &b[2], &a[3]];
    assert_eq!(seqs(&breaks(&log)), ["fork 3"], "the first-seen branch continues");
    let spliced = [&a[0], &a[1], &b[2]];
    assert_eq!(seqs(&breaks(&spliced)), ["unlinked 3"]);
}
