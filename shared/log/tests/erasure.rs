//! A producer destroys its copy of an epoch key whose retention has ended: a signed
//! `EpochKeyDestroyed` goes on the log, and nothing in its store directory or beside it opens
//! to the key any more, although sled keeps overwritten values in its files.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use std::path::{Path, PathBuf};

use base64::Engine as _;
use futures::TryStreamExt as _;
use hru_domain::{CaseId, EventType, PlainSection, ProducerId};
use hru_envelope::fixture::Cast;
use hru_envelope::{StaticAudiences, verify};
use hru_log::SharedLog as _;
use hru_log::{EventLog, EventToSeal, Producer};
use hru_testkit::NatsServer;
use hru_wire::v1 as pb;
use prost::Message as _;

const JUNE_2026: i64 = 1_780_000_000_000;
const JUNE_2030: i64 = 1_906_000_000_000;

/// Every file under `dir`, and files beside it whose names start with its own.
fn files(dir: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    for e in std::fs::read_dir(dir.parent().unwrap()).unwrap().flatten() {
        let p = e.path();
        if p.is_file() && e.file_name().to_string_lossy().starts_with(&name) {
            out.push(p);
        }
    }
    out
}

/// Whether `key` can be had from the files: as raw bytes, as base64, or by unwrapping any
/// wrapped token (`w<gen>:<base64>`) with any 32-byte key written as base64 in those files.
fn recoverable(files: &[PathBuf], key: &[u8; 32], aad: &[u8]) -> bool {
    let b64 = base64::engine::general_purpose::STANDARD;
    let texts: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap_or_default()).collect();
    let encoded = b64.encode(key);
    let mut candidates: Vec<[u8; 32]> = Vec::new();
    let mut wrapped: Vec<Vec<u8>> = Vec::new();
    for t in &texts {
        if t.windows(32).any(|w| w == key) || t.windows(encoded.len()).any(|w| w == encoded.as_bytes()) {
            return true;
        }
        let text = String::from_utf8_lossy(t);
        for token in text.split(|c: char| !(c.is_ascii_alphanumeric() || "+/=:".contains(c))) {
            let token = token
                .strip_prefix('w')
                .and_then(|t| t.split_once(':'))
                .map_or(token, |(_, wrapped)| wrapped);
            if let Ok(bytes) = b64.decode(token) {
                match bytes.len() {
                    32 => candidates.push(bytes.try_into().unwrap()),
                    n if n > 32 => wrapped.push(bytes),
                    _ => {}
                }
            }
        }
    }
    wrapped.iter().any(|w| {
        candidates
            .iter()
            .any(|k| hru_envelope::unwrap_at_rest(k, aad, w).is_some_and(|p| &p == key))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destroyed_epoch_key_cannot_be_had_from_the_producers_store() {
    let server = NatsServer::start().unwrap();
    let log = EventLog::connect(&server.url()).await.unwrap();
    let cast = Cast::new(62);
    let policy = StaticAudiences::new("erasure", 1)
        .share(
            EventType::ReferralReceived,
            "core",
            std::slice::from_ref(&cast.police.party),
        )
        .with_retention("90d");
    let root = tempfile::tempdir().unwrap();
    let store = root.path().join("police.node-1.producer");
    let producer_id = ProducerId {
        party: cast.police.party.clone(),
        instance: "node-1".into(),
    };
    let open = || {
        Producer::open(
            &store,
            producer_id.clone(),
            cast.police.signing.clone(),
            &log,
            &cast.directory,
        )
    };
    let mut producer = open().await.unwrap();
    let event = EventToSeal {
        case_id: CaseId::random(),
        event_type: EventType::ReferralReceived,
        sections: vec![PlainSection {
            name: "core",
            bytes: b"referral facts".to_vec(),
        }],
        occurred_at_ms: JUNE_2026,
        event_id: None,
    };
    producer
        .append_many(
            &log,
            vec![event],
            JUNE_2026,
            &policy,
            &cast.directory,
            &mut rand_core::OsRng,
            true,
        )
        .await
        .unwrap();
    let ((audience, _), state) = producer.sealer().epochs().iter().next().unwrap();
    let (audience, epoch, key) = (audience.clone(), state.epoch, *state.key.bytes());
    let aad = format!("hru epoch key at rest v1|{audience}|{epoch}");

    // Before its retention ends nothing is destroyed; after, it is, once.
    assert!(
        producer
            .destroy_expired(
                &log,
                JUNE_2026,
                jiff::Timestamp::now().as_millisecond(),
                &policy,
                &cast.directory
            )
            .await
            .unwrap()
            .is_empty()
    );
    let destroyed = producer
        .destroy_expired(
            &log,
            JUNE_2030,
            jiff::Timestamp::now().as_millisecond(),
            &policy,
            &cast.directory,
        )
        .await
        .unwrap();
    assert_eq!(destroyed, vec![(audience.clone(), epoch)]);
    drop(producer);
    let mut producer = open().await.unwrap();
    assert!(
        producer.sealer().epochs().is_empty(),
        "a reopened store does not bring it back"
    );
    assert!(
        producer
            .destroy_expired(
                &log,
                JUNE_2030,
                jiff::Timestamp::now().as_millisecond(),
                &policy,
                &cast.directory
            )
            .await
            .unwrap()
            .is_empty()
    );
    drop(producer);

    // The destruction is on the log, signed by the producer.
    let entries: Vec<_> = log.reader().replay(1, &[]).await.unwrap().try_collect().await.unwrap();
    let announced: Vec<pb::EpochKeyDestroyed> = entries
        .iter()
        .map(|e| verify(&e.payload, &cast.directory).unwrap())
        .filter(|v| v.header.event_type == EventType::EpochKeyDestroyed)
        .map(|v| pb::EpochKeyDestroyed::decode(v.body.as_slice()).unwrap())
        .collect();
    assert_eq!(
        announced,
        vec![pb::EpochKeyDestroyed {
            producer: cast.police.party.to_string(),
            audience: audience.to_string(),
            epoch,
            instance: "node-1".into(),
        }]
    );

    // No file of the store, nor beside it, yields the key.
    let files = files(&store);
    assert!(!files.is_empty());
    assert!(
        !recoverable(&files, &key, aad.as_bytes()),
        "the destroyed epoch key can still be had from {files:?}"
    );
}
