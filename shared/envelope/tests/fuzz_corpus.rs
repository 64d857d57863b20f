//! Replays the committed cargo-fuzz seed corpus (fuzz/corpus) through the fuzz entry points,
//! so CI exercises every decoder path the fuzzers start from.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use std::path::{Path, PathBuf};

use hru_envelope::fixture::{frame_log, fuzz_envelope, fuzz_key_granted, seed_envelopes};
use hru_wire::v1 as pb;
use prost::Message as _;

fn corpus(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target)
}

fn files(target: &str) -> Vec<Vec<u8>> {
    let mut paths: Vec<_> = std::fs::read_dir(corpus(target))
        .unwrap_or_else(|e| panic!("fuzz/corpus/{target}: {e}"))
        .map(|e| e.expect("dir entry").path())
        .collect();
    paths.sort();
    paths.iter().map(|p| std::fs::read(p).expect("corpus file")).collect()
}

#[test]
fn envelope_corpus_replays_without_panic() {
    let seeds = files("envelope");
    assert!(seeds.len() >= 5, "seed corpus present");
    for s in &seeds {
        fuzz_envelope(s);
        for cut in [0, 1, s.len() / 2, s.len().saturating_sub(1)] {
            fuzz_envelope(&s[..cut]);
        }
    }
}

#[test]
fn key_granted_corpus_replays_without_panic() {
    let seeds = files("key_granted");
    assert!(seeds.len() >= 2, "seed corpus present");
    for s in &seeds {
        fuzz_key_granted(s);
        for cut in [0, 1, s.len() / 2] {
            fuzz_key_granted(&s[..cut]);
        }
    }
}

/// Regenerates the seed corpus: `cargo test -p hru-envelope --test fuzz_corpus -- --ignored`.
#[test]
#[ignore = "writes fuzz/corpus; run by hand when the wire contract changes"]
fn write_seed_corpus() {
    let seeds = seed_envelopes();
    std::fs::write(
        corpus("envelope").join("seed-log"),
        frame_log(seeds.iter().map(|e| e.bytes.as_slice())),
    )
    .expect("write");
    for (i, e) in seeds.iter().enumerate() {
        std::fs::write(
            corpus("envelope").join(format!("seed-{i:02}-{}", e.header.event_type)),
            &e.bytes,
        )
        .expect("write");
        if e.header.event_type == hru_domain::EventType::KeyGranted {
            let env = pb::Envelope::decode(e.bytes.as_slice()).expect("decodes");
            std::fs::write(corpus("key_granted").join(format!("seed-{i:02}")), env.body).expect("write");
        }
    }
}
