//! Key lifecycle in the audit: a rotation signed by the old key ends it and starts the new one;
//! a revocation ends a key from its time; an event signed by a retired key is a finding, one
//! signed after a revocation a sharper one; a rotation not signed by the old key is refused.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use ed25519_dalek::SigningKey;
use hru_audit::{Auditor, FindingKind};
use hru_domain::{EventType, ProducerId};
use hru_envelope::fixture::Cast;
use hru_envelope::{Sealer, StaticAudiences, key_id};
use hru_policy::PolicySet;
use hru_wire::v1 as pb;
use prost::Message as _;

struct Log {
    entries: Vec<(String, Vec<u8>)>,
}

impl Log {
    fn public(&mut self, sealer: &mut Sealer, t: EventType, body: Vec<u8>, at: i64) {
        let policy = StaticAudiences::new("example", 1);
        let batch = sealer.prepare_public(t, body, at, &policy).unwrap();
        sealer.commit(&batch, batch.envelopes.len());
        for e in batch.envelopes {
            self.entries.push((e.subject.to_string(), e.bytes));
        }
    }

    fn note(&mut self, sealer: &mut Sealer, at: i64) {
        let body = pb::PolicyAdopted {
            policy_id: "example".into(),
            version: 1,
            digest: vec![0; 32],
            effective_from_ms: 1,
        };
        self.public(sealer, EventType::PolicyAdopted, body.encode_to_vec(), at);
    }

    fn audit(&self, cast: &Cast) -> Vec<(u64, FindingKind)> {
        let policies = PolicySet::default();
        let mut auditor = Auditor::new(&cast.directory, &policies);
        for (i, (subject, bytes)) in self.entries.iter().enumerate() {
            auditor.observe(i as u64 + 1, subject, bytes, hru_broker::StoredAt::Unknown);
        }
        auditor.finish().findings.iter().map(|f| (f.sequence, f.kind)).collect()
    }
}

fn producer(cast: &Cast, instance: &str) -> ProducerId {
    ProducerId {
        party: cast.police.party.clone(),
        instance: instance.into(),
    }
}

fn rotation(cast: &Cast, old: &SigningKey, new: &SigningKey) -> Vec<u8> {
    let public = new.verifying_key().to_bytes();
    pb::KeyRotated {
        party: cast.police.party.to_string(),
        old_key_id: key_id(&old.verifying_key().to_bytes()).0.to_vec(),
        new_key_id: key_id(&public).0.to_vec(),
        new_public_key: public.to_vec(),
        purpose: "signing".into(),
    }
    .encode_to_vec()
}

#[test]
fn rotation_and_revocation_are_honoured_and_late_signatures_found() {
    let cast = Cast::new(21);
    let old = cast.police.signing.clone();
    let new = SigningKey::from_bytes(&[42; 32]);
    let mut log = Log { entries: Vec::new() };
    let mut desk = Sealer::new(producer(&cast, "desk"), old.clone());
    log.note(&mut desk, 1_000);
    log.public(&mut desk, EventType::KeyRotated, rotation(&cast, &old, &new), 2_000);
    // The desk carries on with the new key, on the same chain.
    let mut desk = Sealer::resume(
        producer(&cast, "desk"),
        new.clone(),
        desk.chain(),
        desk.epochs().clone(),
    );
    log.note(&mut desk, 3_000);
    assert!(log.audit(&cast).is_empty(), "a clean rotation: {:?}", log.audit(&cast));

    // A forgotten instance still signing with the old key after the rotation.
    let mut stale = Sealer::new(producer(&cast, "stale"), old.clone());
    log.note(&mut stale, 3_500);
    // The new key is revoked from 4,000 (say it leaked); an event signed at 5,000 with it.
    let revoked = pb::KeyRevoked {
        party: cast.police.party.to_string(),
        key_id: key_id(&new.verifying_key().to_bytes()).0.to_vec(),
        revoked_at_ms: 4_000,
        reason: "laptop stolen".into(),
    };
    log.public(&mut desk, EventType::KeyRevoked, revoked.encode_to_vec(), 4_000);
    let mut thief = Sealer::new(producer(&cast, "thief"), new.clone());
    log.note(&mut thief, 5_000);
    // The thief again, backdating to before the revocation's effective time: the log holds it
    // after the revocation, so it is refused whatever time it claims.
    let mut backdater = Sealer::new(producer(&cast, "backdater"), new.clone());
    log.note(&mut backdater, 3_100);
    // Someone else's key announcing a rotation of police's key, signed by the wrong key.
    let mut forger = Sealer::new(producer(&cast, "forger"), new.clone());
    let other = SigningKey::from_bytes(&[7; 32]);
    log.public(&mut forger, EventType::KeyRotated, rotation(&cast, &other, &new), 3_900);

    let findings = log.audit(&cast);
    println!("{findings:?}");
    assert_eq!(
        findings,
        [
            (4, FindingKind::KeyNotValid),
            (6, FindingKind::SignedAfterRevocation),
            (7, FindingKind::SignedAfterRevocation),
            (8, FindingKind::SignedAfterRevocation),
        ]
    );
}

#[test]
fn the_broker_time_reaches_what_was_stored_before_the_revocation_event() {
    let cast = Cast::new(22);
    let key = cast.police.signing.clone();
    let mut log = Log { entries: Vec::new() };
    let mut desk = Sealer::new(producer(&cast, "desk"), key.clone());
    log.note(&mut desk, 1_000);
    // The key leaks at 4,000; the thief's envelope, claiming 3,100, is stored an hour later;
    // the party revokes from 4,000 after that.
    let mut thief = Sealer::new(producer(&cast, "thief"), key.clone());
    log.note(&mut thief, 3_100);
    let revoked = pb::KeyRevoked {
        party: cast.police.party.to_string(),
        key_id: key_id(&key.verifying_key().to_bytes()).0.to_vec(),
        revoked_at_ms: 4_000,
        reason: "key file copied".into(),
    };
    log.public(&mut desk, EventType::KeyRevoked, revoked.encode_to_vec(), 3_800_000);
    let stored = [1_000, 3_700_000, 3_800_000];
    let policies = PolicySet::default();
    let audit = |learn: bool| {
        let mut auditor = Auditor::new(&cast.directory, &policies);
        if learn {
            for (i, (_, bytes)) in log.entries.iter().enumerate() {
                auditor.learn_key_event(i as u64 + 1, bytes);
            }
        }
        for (i, (subject, bytes)) in log.entries.iter().enumerate() {
            auditor.observe(i as u64 + 1, subject, bytes, hru_broker::StoredAt::Exactly(stored[i]));
        }
        auditor
            .finish()
            .findings
            .iter()
            .map(|f| (f.sequence, f.kind))
            .collect::<Vec<_>>()
    };
    assert_eq!(audit(true), [(2, FindingKind::SignedAfterRevocation)]);
    // Read in one pass, the revocation is not known yet when the thief's envelope passes: only
    // its recorded time, far from the broker's, is found.
    assert_eq!(audit(false), [(2, FindingKind::RecordedAtSkew)]);
}
