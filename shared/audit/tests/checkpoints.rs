//! Witnessed checkpoints: a producer states its chain head in a signed checkpoint; another party
//! countersigns it after checking it against the log it holds (or keeps it outside the log). A
//! truncated tail, a rolled-back log and a frozen log are then found, even by an auditor that
//! holds only what is left.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use hru_audit::{Auditor, FindingKind, WitnessedCheckpoint};
use hru_domain::{EventType, ProducerId};
use hru_envelope::fixture::Cast;
use hru_envelope::{Sealer, StaticAudiences};
use hru_policy::PolicySet;
use hru_wire::v1 as pb;
use prost::Message as _;

type Entry = (String, Vec<u8>);

fn seal(sealer: &mut Sealer, t: EventType, body: Vec<u8>, at: i64) -> Entry {
    let batch = sealer
        .prepare_public(t, body, at, &StaticAudiences::new("example", 1))
        .unwrap();
    sealer.commit(&batch, batch.envelopes.len());
    let e = batch.envelopes.into_iter().next().unwrap();
    (e.subject.to_string(), e.bytes)
}

fn note(sealer: &mut Sealer, at: i64, n: u32) -> Entry {
    let body = pb::PolicyAdopted {
        policy_id: "example".into(),
        version: n,
        digest: vec![0; 32],
        effective_from_ms: 1,
    };
    seal(sealer, EventType::PolicyAdopted, body.encode_to_vec(), at)
}

fn checkpoint_of(sealer: &Sealer, at: i64) -> pb::ChainCheckpoint {
    let head = sealer.chain();
    pb::ChainCheckpoint {
        party: "police-hru".into(),
        instance: "desk".into(),
        head_seq: head.next_seq - 1,
        head_digest: head.prev_digest.0.to_vec(),
        at_ms: at,
    }
}

fn audit(cast: &Cast, log: &[&Entry], prepare: impl FnOnce(&mut Auditor<'_>)) -> Vec<FindingKind> {
    let policies = PolicySet::default();
    let mut auditor = Auditor::new(&cast.directory, &policies);
    prepare(&mut auditor);
    for (i, (subject, bytes)) in log.iter().enumerate() {
        auditor.observe(i as u64 + 1, subject, bytes, hru_broker::StoredAt::Unknown);
    }
    auditor.finish().findings.iter().map(|f| f.kind).collect()
}

const T: i64 = 1_800_000_000_000;

#[test]
fn truncation_rollback_and_a_frozen_log_are_found() {
    let cast = Cast::new(31);
    let desk = ProducerId {
        party: cast.police.party.clone(),
        instance: "desk".into(),
    };
    let mut police = Sealer::new(desk.clone(), cast.police.signing.clone());
    let mut witness = Sealer::new(
        ProducerId {
            party: cast.probation.party.clone(),
            instance: "witness".into(),
        },
        cast.probation.signing.clone(),
    );
    let e1 = note(&mut police, T, 1);
    let e2 = note(&mut police, T + 1, 2);
    // A copy of the producer before e3, to rewrite history from there.
    let mut rewriter = police.clone();
    let e3 = note(&mut police, T + 2, 3);
    let checkpoint = checkpoint_of(&police, T + 3);
    let cp = seal(
        &mut police,
        EventType::ChainCheckpoint,
        checkpoint.encode_to_vec(),
        T + 3,
    );
    let head = (checkpoint.head_seq, checkpoint.head_digest.clone());
    let witnessed = pb::CheckpointWitnessed {
        checkpoint: Some(checkpoint),
        checkpoint_event_id: vec![0; 16],
    };
    let w = seal(
        &mut witness,
        EventType::CheckpointWitnessed,
        witnessed.encode_to_vec(),
        T + 4,
    );
    let kept = |auditor: &mut Auditor<'_>| {
        auditor.expect(WitnessedCheckpoint {
            producer: desk.clone(),
            head_seq: head.0,
            head_digest: head.1.clone().try_into().unwrap(),
            witness: "probation's witness file".into(),
            sequence: 0,
        })
    };

    // Clean, and fresh.
    assert_eq!(
        audit(&cast, &[&e1, &e2, &e3, &cp, &w], |a| a
            .require_fresh_checkpoints(T + 60_000, 3_600_000)),
        []
    );
    assert_eq!(audit(&cast, &[&e1, &e2, &e3, &cp, &w], kept), []);

    // The tail of police's chain is cut (e3 and the checkpoint); the witness's event remains.
    assert_eq!(audit(&cast, &[&e1, &e2, &w], |_| {}), [FindingKind::TruncatedTail]);
    // Everything after e2 is cut, the witness's event too; the witness's own copy still tells.
    assert_eq!(audit(&cast, &[&e1, &e2], kept), [FindingKind::TruncatedTail]);

    // The log is rolled back to e2 and rewritten with another e3.
    let other = note(&mut rewriter, T + 2, 99);
    assert_eq!(audit(&cast, &[&e1, &e2, &other], kept), [FindingKind::RolledBack]);

    // Nothing has been checkpointed for two hours where one hour is allowed: frozen.
    assert_eq!(
        audit(&cast, &[&e1, &e2, &e3, &cp], |a| a
            .require_fresh_checkpoints(T + 7_200_000, 3_600_000)),
        [FindingKind::FrozenLog]
    );

    // A checkpoint that misstates its head is refused.
    let lie = pb::ChainCheckpoint {
        head_seq: 1,
        ..checkpoint_of(&rewriter, T + 5)
    };
    let bad = seal(&mut rewriter, EventType::ChainCheckpoint, lie.encode_to_vec(), T + 5);
    assert_eq!(
        audit(&cast, &[&e1, &e2, &other, &bad], |_| {}),
        [FindingKind::BadCheckpoint]
    );
}

#[test]
fn a_party_cannot_witness_its_own_chain() {
    let cast = Cast::new(32);
    let desk = ProducerId {
        party: cast.police.party.clone(),
        instance: "desk".into(),
    };
    let mut police = Sealer::new(desk, cast.police.signing.clone());
    // Another instance of the same party: a fork of police's history could be vouched for by
    // police itself.
    let mut own = Sealer::new(
        ProducerId {
            party: cast.police.party.clone(),
            instance: "second-desk".into(),
        },
        cast.police.signing.clone(),
    );
    let e1 = note(&mut police, T, 1);
    let checkpoint = checkpoint_of(&police, T + 1);
    let cp = seal(
        &mut police,
        EventType::ChainCheckpoint,
        checkpoint.encode_to_vec(),
        T + 1,
    );
    let witnessed = pb::CheckpointWitnessed {
        checkpoint: Some(checkpoint),
        checkpoint_event_id: vec![0; 16],
    };
    let w = seal(
        &mut own,
        EventType::CheckpointWitnessed,
        witnessed.encode_to_vec(),
        T + 2,
    );
    assert_eq!(audit(&cast, &[&e1, &cp, &w], |_| {}), [FindingKind::BadCheckpoint]);
}
