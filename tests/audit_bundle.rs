//! One case's evidence bundle on a real server, verified with nothing else: `hru audit bundle`
//! cuts it from the log (the case's envelopes, their grants, the control events, the chains
//! to a witnessed checkpoint, the directory and the agreements), and `hru audit verify-bundle`
//! checks it with no broker and no secret key. A changed envelope, a chain position taken out
//! and an agreement text that is not the one adopted are each found.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use std::process::{Command, Output};

use hru_tests::World;
use hru_wire::v1 as pb;
use prost::Message as _;

const PARTIES: [&str; 5] = ["police-hru", "probation", "cwp", "mersey-care", "em-vendor"];
const AGREEMENT: &str = "data/round-trip.toml";
const CASE: &str = "0b9e2a7c-5d1f-4c3a-9e8b-7a6f5e4d3c2b";
const OTHER: &str = "5e7f1d2c-3b4a-4c5d-8e9f-0a1b2c3d4e5f";

fn referral(case: &str, area: &str) -> String {
    hru_tests::referral_json(case, area)
}

/// `hru audit verify-bundle` with no broker to reach and no keys: only the file.
fn verify(file: &std::path::Path, extra: &[&str]) -> (Output, String) {
    let out = Command::new(hru_tests::hru_bin())
        .args(["audit", "verify-bundle"])
        .arg(file)
        .args(extra)
        .env("HRU_NATS_URL", "nats://127.0.0.1:9")
        .env_remove("HRU_POLICIES")
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, text)
}

fn rewrite(from: &std::path::Path, to: &std::path::Path, change: impl FnOnce(&mut pb::AuditBundle)) {
    let mut b = pb::AuditBundle::decode(std::fs::read(from).unwrap().as_slice()).unwrap();
    change(&mut b);
    std::fs::write(to, b.encode_to_vec()).unwrap();
}

#[test]
fn a_case_bundle_verifies_offline_and_tampering_is_found() {
    let world = World::new(AGREEMENT, &PARTIES);
    let keys = hru_tests::path(world.dir.path(), "keys");
    let append = |case: &str, name: &str| {
        let out = world.append("police-hru", &world.event(name, &referral(case, name)));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    hru_tests::succeeded(
        &world.run(&["policy", "adopt", "--party", "police-hru", "--keys", &keys]),
        "policy adopt",
    );
    append(CASE, "Chester");
    append(OTHER, "Crewe");
    append(CASE, "Nantwich");
    hru_tests::succeeded(
        &world.run(&["audit", "checkpoint", "--party", "police-hru", "--keys", &keys]),
        "audit checkpoint",
    );
    let witness_file = hru_tests::path(world.dir.path(), "probation-witness.jsonl");
    hru_tests::succeeded(
        &world.run(&[
            "audit",
            "witness",
            "--party",
            "probation",
            "--keys",
            &keys,
            "--out",
            &witness_file,
        ]),
        "audit witness",
    );
    // After the witnessed checkpoint: one more of the case, one of another case.
    append(CASE, "Macclesfield");
    append(OTHER, "Warrington");

    let file = world.dir.path().join("case.bundle");
    let made = hru_tests::succeeded(
        &world.run(&["audit", "bundle", "--case", CASE, "--out", &file.display().to_string()]),
        "audit bundle",
    );
    println!("{made}");
    let bundle = pb::AuditBundle::decode(std::fs::read(&file).unwrap().as_slice()).unwrap();
    let other: Vec<u64> = bundle
        .messages
        .iter()
        .filter(|m| m.subject.contains(&OTHER.replace('-', "")) || m.subject.contains(OTHER))
        .map(|m| m.sequence)
        .collect();
    assert_eq!(
        other.len(),
        1,
        "of the other case, only the envelope inside police's witnessed chain: {other:?}"
    );

    // Verified with the file alone: clean; three case envelopes, two under the checkpoint.
    let (out, text) = verify(&file, &[]);
    println!("{text}");
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("3 case envelopes (2 under a witnessed checkpoint), 0 findings"),
        "{text}"
    );
    assert!(text.contains("vouched for by probation"), "{text}");
    // Required to be witnessed, the last is not yet.
    let (out, text) = verify(&file, &["--require-witnessed"]);
    assert_eq!(out.status.code(), Some(1), "{text}");

    // A byte of a case envelope's ciphertext changed: its signature fails.
    let changed = world.dir.path().join("changed.bundle");
    rewrite(&file, &changed, |b| {
        let m = b
            .messages
            .iter_mut()
            .find(|m| m.subject.ends_with(".ReferralReceived") && !m.subject.contains(&OTHER.replace('-', "")))
            .unwrap();
        let mut env = pb::Envelope::decode(m.payload.as_slice()).unwrap();
        env.sections[0].ciphertext[0] ^= 1;
        m.payload = env.encode_to_vec();
    });
    let (out, text) = verify(&changed, &[]);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("bad-signature"), "{text}");

    // The other case's envelope taken out of police's chain: the case's first referral no
    // longer runs unbroken to the witnessed checkpoint.
    let cut = world.dir.path().join("cut.bundle");
    rewrite(&file, &cut, |b| b.messages.retain(|m| !other.contains(&m.sequence)));
    let (out, text) = verify(&cut, &[]);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("chain-incomplete"), "{text}");

    // The agreement's text is not the one adopted: found, naming the version.
    let edited = world.dir.path().join("edited.bundle");
    rewrite(&file, &edited, |b| {
        b.agreements[0].text.push_str("\n# amended after the fact\n")
    });
    let (out, text) = verify(&edited, &[]);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("agreement-text-differs"), "{text}");

    // A party's key cannot cut a bundle (it reads only its own view).
    let refused = world.run(&[
        "--identity",
        &format!("{keys}/police-hru.secret"),
        "audit",
        "bundle",
        "--case",
        CASE,
        "--out",
        &world.dir.path().join("view.bundle").display().to_string(),
    ]);
    assert!(!refused.status.success());
}
