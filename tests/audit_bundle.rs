//! One case's evidence bundle on a real server, verified with nothing else: `hru audit bundle`
//! cuts it from the log (the case's envelopes, their grants, the control events, the chains
//! to a witnessed checkpoint, the directory and the agreements), and `hru audit verify-bundle`
//! checks it with no broker and no secret key, anchored by what the verifier trusts (their
//! copy of the policies, their witness's file). A changed envelope, chain positions taken
//! out, an agreement text that is not the one adopted (or not adopted at all), another
//! directory and a file cut short are each found.

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

/// The bundle at `from` changed by `change`, its trailer made to match (as a forger would).
fn rewrite(from: &std::path::Path, to: &std::path::Path, change: impl FnOnce(&mut pb::AuditBundle)) {
    let mut b = pb::AuditBundle::decode(std::fs::read(from).unwrap().as_slice()).unwrap();
    change(&mut b);
    b.message_count = b.messages.len() as u64;
    let mut h = <sha2::Sha256 as sha2::Digest>::new();
    for m in &b.messages {
        let bytes = m.encode_to_vec();
        sha2::Digest::update(&mut h, (bytes.len() as u64).to_be_bytes());
        sha2::Digest::update(&mut h, &bytes);
    }
    b.messages_digest = sha2::Digest::finalize(h).to_vec();
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
    assert!(text.contains("NOT ANCHORED"), "{text}");
    // Required to be witnessed, the last is not yet.
    let (out, text) = verify(&file, &["--require-witnessed"]);
    assert_eq!(out.status.code(), Some(1), "{text}");
    // Anchored by the verifier's own copies: the policies they hold, their witness's file.
    let policies = hru_tests::path(world.dir.path(), "policies");
    let anchors = ["--case", CASE, "--trust", &policies, "--witness", &witness_file];
    let (out, text) = verify(&file, &anchors);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("compared with --trust"), "{text}");
    assert!(text.contains("(witness file)"), "{text}");
    let (out, text) = verify(&file, &["--case", OTHER]);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("other-case"), "{text}");

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

    // The witnessed head itself (a case envelope) taken out: its chain is no longer whole.
    let headless = world.dir.path().join("headless.bundle");
    rewrite(&file, &headless, |b| {
        b.messages.retain(|m| {
            hru_envelope::decode_header(&m.payload)
                .map(|h| !(h.producer.party.as_str() == "police-hru" && h.producer_seq == 6))
                .unwrap_or(true)
        })
    });
    let (out, text) = verify(&headless, &[]);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("chain-incomplete"), "{text}");

    // The agreement's text is not the one adopted: found, naming the version; with the
    // adoption taken out too, the text is anchored to nothing; against the verifier's copy,
    // it differs.
    let edited = world.dir.path().join("edited.bundle");
    rewrite(&file, &edited, |b| {
        b.agreements[0].text.push_str("\n# amended after the fact\n")
    });
    let (out, text) = verify(&edited, &[]);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("agreement-text-differs"), "{text}");
    let unadopted = world.dir.path().join("unadopted.bundle");
    rewrite(&edited, &unadopted, |b| {
        b.messages.retain(|m| !m.subject.ends_with(".PolicyAdopted"))
    });
    let (out, text) = verify(&unadopted, &[]);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("agreement-unanchored"), "{text}");
    let (out, text) = verify(&unadopted, &["--trust", &policies]);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("agreement-differs"), "{text}");

    // Another directory than the verifier's (a forger's own keys): found against --trust.
    let other_directory = world.dir.path().join("directory.bundle");
    rewrite(&file, &other_directory, |b| b.directory_toml.push_str("\n# another\n"));
    let (out, text) = verify(&other_directory, &["--trust", &policies]);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("directory-differs"), "{text}");

    // A file cut short at a message boundary (its trailer left as written): refused.
    let short = world.dir.path().join("short.bundle");
    let mut b = pb::AuditBundle::decode(std::fs::read(&file).unwrap().as_slice()).unwrap();
    b.messages.pop();
    std::fs::write(&short, b.encode_to_vec()).unwrap();
    let (out, text) = verify(&short, &[]);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("cut short"), "{text}");

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
