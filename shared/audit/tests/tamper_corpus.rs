//! The audit over real logs on real NATS, written through a raw publisher that bypasses the
//! library: a clean log yields no finding; each mutation is found with its kind. Prints the
//! matrix (mutation → finding kinds).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use futures::TryStreamExt as _;
use hru_log::SharedLog as _;
use std::collections::BTreeSet;

use async_nats::jetstream;
use hru_audit::{Auditor, FindingKind};
use hru_domain::{CaseId, ProducerId, split_draft};
use hru_envelope::fixture::{Cast, party_secrets, resign};
use hru_envelope::{SealedEnvelope, Sealer, key_id};
use hru_log::EventLog;
use hru_policy::{CompiledIsa, PolicySet};
use hru_testkit::NatsServer;
use hru_wire::v1 as pb;
use prost::Message as _;

const AGREEMENT: &str = include_str!("../../../tests/data/round-trip.toml");
/// The corpus is sealed now: the broker stores it within the skew bound of its recorded time.
static NOW: std::sync::LazyLock<i64> = std::sync::LazyLock::new(|| {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
});

fn agreement(text: &str, cast: &Cast) -> CompiledIsa {
    CompiledIsa::compile(text, "round-trip.toml", Some(&cast.directory)).unwrap()
}

fn referral(n: u32) -> pb::event_draft::Event {
    pb::event_draft::Event::ReferralReceived(pb::ReferralReceived {
        core: Some(pb::ReferralCore {
            subject_ref: vec![(n % 256) as u8; 32],
            behaviours: vec![1],
            area: format!("area {n}"),
            received_at_ms: *NOW,
            out_of_hours: false,
            crime_reference: String::new(),
        }),
        identity: Some(pb::ReferralIdentity {
            subject: Some(pb::PersonIdentity {
                full_name: format!("P{n}"),
                ..Default::default()
            }),
            victim: None,
        }),
        narrative: None,
    })
}

fn seal_n(sealer: &mut Sealer, cast: &Cast, isa: &CompiledIsa, n: u32, case: CaseId) -> Vec<SealedEnvelope> {
    let mut out = Vec::new();
    for i in 0..n {
        let (t, s) = split_draft(referral(i));
        out.extend(
            sealer
                .seal_event(case, t, s, *NOW, *NOW, isa, &cast.directory, &mut rand_core::OsRng)
                .unwrap(),
        );
    }
    out
}

/// Publish raw (subject, bytes) to a fresh server's HRU_EVENTS and audit it.
async fn audit(cast: &Cast, policies: &PolicySet, messages: &[(String, Vec<u8>)]) -> (u64, BTreeSet<FindingKind>) {
    let server = NatsServer::builder().sync_always(false).start().unwrap();
    let log = EventLog::connect(&server.url()).await.unwrap();
    let js = jetstream::new(hru_log::connect(&server.url(), None).await.unwrap());
    for (subject, bytes) in messages {
        js.publish(subject.clone(), bytes.clone().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let mut auditor = Auditor::new(&cast.directory, policies);
    for e in log
        .reader()
        .replay(1, &[])
        .await
        .unwrap()
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
    {
        auditor.observe(e.sequence, e.subject.as_str(), &e.payload, e.stored);
    }
    let report = auditor.finish();
    (report.checked, report.findings.iter().map(|f| f.kind).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_mutation_is_found_with_its_kind() {
    let cast = Cast::new(81);
    let isa = agreement(AGREEMENT, &cast);
    let mut policies = PolicySet::default();
    policies.insert(isa.clone());
    let producer = ProducerId {
        party: cast.police.party.clone(),
        instance: "node-1".into(),
    };
    let mut sealer = Sealer::new(producer.clone(), cast.police.signing.clone());
    let case = CaseId::random();
    let mut clean = seal_n(&mut sealer, &cast, &isa, 39, case);
    let mut fork = sealer.clone(); // the same chain head: a second history from here
    clean.extend(seal_n(&mut sealer, &cast, &isa, 1, case));
    let msgs = |envs: &[SealedEnvelope]| {
        envs.iter()
            .map(|e| (e.subject.to_string(), e.bytes.clone()))
            .collect::<Vec<_>>()
    };

    // A clean log of 10k events: no finding.
    let big = {
        let mut s = Sealer::new(
            ProducerId {
                party: cast.police.party.clone(),
                instance: "bulk".into(),
            },
            cast.police.signing.clone(),
        );
        seal_n(&mut s, &cast, &isa, 10_000, CaseId::random())
    };
    let (checked, none) = audit(&cast, &policies, &msgs(&big)).await;
    assert!(checked >= 10_000);
    assert!(none.is_empty(), "a clean log has no finding: {none:?}");

    let mut matrix: Vec<(&str, BTreeSet<FindingKind>, FindingKind)> = Vec::new();
    let base = msgs(&clean);
    let last = base.len() - 1;

    let mut m = base.clone();
    let sig_at = m[last].1.len() - 3;
    m[last].1[sig_at] ^= 0x01;
    matrix.push((
        "byte flip in the signature",
        audit(&cast, &policies, &m).await.1,
        FindingKind::BadSignature,
    ));

    let mut m = base.clone();
    let mut env = pb::Envelope::decode(m[last].1.as_slice()).unwrap();
    env.sections[0].ciphertext[5] ^= 0x01;
    m[last].1 = env.encode_to_vec();
    matrix.push((
        "byte flip in a section's ciphertext",
        audit(&cast, &policies, &m).await.1,
        FindingKind::BadSignature,
    ));

    let mut m = base.clone();
    let mut env = pb::Envelope::decode(m[last].1.as_slice()).unwrap();
    let mut header = pb::EventHeader::decode(env.header.as_slice()).unwrap();
    header.occurred_at_ms += 1;
    env.header = header.encode_to_vec();
    m[last].1 = env.encode_to_vec();
    matrix.push((
        "a header field changed",
        audit(&cast, &policies, &m).await.1,
        FindingKind::BadSignature,
    ));

    let mut m = base.clone();
    let cut = m[last].1.len() - 70;
    m[last].1.truncate(cut);
    matrix.push((
        "envelope cut short",
        audit(&cast, &policies, &m).await.1,
        FindingKind::Malformed,
    ));

    let mut m = base.clone();
    m.remove(10);
    matrix.push(("deletion", audit(&cast, &policies, &m).await.1, FindingKind::ChainGap));

    let mut m = base.clone();
    m.insert(11, m[10].clone());
    matrix.push((
        "duplicate",
        audit(&cast, &policies, &m).await.1,
        FindingKind::ChainDuplicate,
    ));

    let mut m = base.clone();
    m.swap(10, 11);
    matrix.push((
        "reorder",
        audit(&cast, &policies, &m).await.1,
        FindingKind::ChainOutOfOrder,
    ));

    let mut m = base.clone();
    let other = CaseId::random();
    m.push((m[last].0.replace(&case.token(), &other.token()), m[last].1.clone()));
    matrix.push((
        "event replayed into another case",
        audit(&cast, &policies, &m).await.1,
        FindingKind::SubjectMismatch,
    ));

    let mut m = base.clone();
    let intruder = party_secrets("police-hru", 99);
    let mut header =
        pb::EventHeader::decode(pb::Envelope::decode(m[last].1.as_slice()).unwrap().header.as_slice()).unwrap();
    header.key_id = key_id(intruder.signing.verifying_key().as_bytes()).0.to_vec();
    let forged = pb::Envelope {
        header: header.encode_to_vec(),
        ..pb::Envelope::decode(m[last].1.as_slice()).unwrap()
    };
    m[last].1 = resign(&forged, &intruder.signing);
    matrix.push((
        "forged signature (key not in the directory)",
        audit(&cast, &policies, &m).await.1,
        FindingKind::UnknownSigningKey,
    ));

    let over = agreement(
        &AGREEMENT.replace(
            "sections = [\"identity\"]\nto = [\"police-hru\"]",
            "sections = [\"identity\"]\nto = [\"police-hru\", \"probation\"]",
        ),
        &cast,
    );
    let mut s = Sealer::new(producer.clone(), cast.police.signing.clone());
    let m = msgs(&seal_n(&mut s, &cast, &over, 3, case));
    matrix.push((
        "over-shared audience",
        audit(&cast, &policies, &m).await.1,
        FindingKind::OverShared,
    ));

    let under = agreement(
        &AGREEMENT.replace(
            "to = [\"police-hru\", \"probation\", \"cwp\", \"mersey-care\"]",
            "to = [\"police-hru\", \"probation\", \"cwp\"]",
        ),
        &cast,
    );
    let mut s = Sealer::new(producer.clone(), cast.police.signing.clone());
    let m = msgs(&seal_n(&mut s, &cast, &under, 3, case));
    matrix.push((
        "under-shared audience",
        audit(&cast, &policies, &m).await.1,
        FindingKind::UnderShared,
    ));

    let forked = seal_n(&mut fork, &cast, &isa, 1, case);
    let mut m = base.clone();
    m.extend(msgs(&forked));
    matrix.push((
        "forked chain (a second history)",
        audit(&cast, &policies, &m).await.1,
        FindingKind::ChainFork,
    ));

    // Probation witnessed police's chain head; the log then lost its tail, or was rolled back
    // and rewritten (the forked history above stands in for the rewrite).
    let head = sealer.chain();
    let witnessed = pb::CheckpointWitnessed {
        checkpoint: Some(pb::ChainCheckpoint {
            party: producer.party.to_string(),
            instance: producer.instance.clone(),
            head_seq: head.next_seq - 1,
            head_digest: head.prev_digest.0.to_vec(),
            at_ms: *NOW,
        }),
        checkpoint_event_id: vec![0; 16],
    };
    let probation = Sealer::new(
        ProducerId {
            party: cast.probation.party.clone(),
            instance: "witness".into(),
        },
        cast.probation.signing.clone(),
    );
    let w = probation
        .prepare_public(
            hru_domain::EventType::CheckpointWitnessed,
            witnessed.encode_to_vec(),
            *NOW,
            &isa,
        )
        .unwrap();
    let w = (w.envelopes[0].subject.to_string(), w.envelopes[0].bytes.clone());
    let mut m = base[..last].to_vec();
    m.push(w.clone());
    matrix.push((
        "truncated tail (after a witnessed checkpoint)",
        audit(&cast, &policies, &m).await.1,
        FindingKind::TruncatedTail,
    ));
    let mut m = base[..last].to_vec();
    m.extend(msgs(&forked));
    m.push(w);
    matrix.push((
        "rolled back and rewritten log",
        audit(&cast, &policies, &m).await.1,
        FindingKind::RolledBack,
    ));

    // Police's key is revoked from NOW; an event it signed after that is found.
    let revoked = pb::KeyRevoked {
        party: cast.police.party.to_string(),
        key_id: cast.police.signing_key_id().0.to_vec(),
        revoked_at_ms: *NOW,
        reason: "key compromised".into(),
    };
    let keys = Sealer::new(
        ProducerId {
            party: cast.police.party.clone(),
            instance: "keys".into(),
        },
        cast.police.signing.clone(),
    );
    let r = keys
        .prepare_public(hru_domain::EventType::KeyRevoked, revoked.encode_to_vec(), *NOW, &isa)
        .unwrap();
    let mut m = base.clone();
    m.insert(last, (r.envelopes[0].subject.to_string(), r.envelopes[0].bytes.clone()));
    matrix.push((
        "an event signed by a revoked key",
        audit(&cast, &policies, &m).await.1,
        FindingKind::SignedAfterRevocation,
    ));

    let mut m = base.clone();
    m.push((
        format!("hru.evt.{}.police-hru.ReferralReceived", case.token()),
        b"\x0a\x03abc".to_vec(),
    ));
    matrix.push((
        "garbage bytes",
        audit(&cast, &policies, &m).await.1,
        FindingKind::Malformed,
    ));

    let mut m = base.clone();
    m.remove(1); // the identity grant
    matrix.push((
        "a key grant deleted",
        audit(&cast, &policies, &m).await.1,
        FindingKind::MissingGrant,
    ));

    println!("{:<46} finding kinds", "mutation");
    for (name, kinds, _) in &matrix {
        println!(
            "{name:<46} {}",
            kinds.iter().map(|k| k.name()).collect::<Vec<_>>().join(", ")
        );
    }
    for (name, kinds, want) in &matrix {
        assert!(kinds.contains(want), "{name}: expected {}, got {kinds:?}", want.name());
    }
}
