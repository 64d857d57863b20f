//! Witnessed checkpoints on real servers: police checkpoints its chain, probation witnesses it
//! and keeps a copy; the log audits clean against the copy. A server restored from an older
//! copy of the log (its tail missing), and one whose history was rewritten after the
//! checkpoint, are both caught by `hru audit verify --witness`, with the right finding.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use futures::TryStreamExt as _;
use hru_log::SharedLog as _;
use hru_testkit::NatsServer;
use hru_tests::World;

const PARTIES: [&str; 5] = ["police-hru", "probation", "cwp", "mersey-care", "em-vendor"];
const AGREEMENT: &str = "data/round-trip.toml";

fn referral(case: &str, area: &str) -> String {
    format!(
        r#"{{"caseId": "{case}", "referralReceived": {{"core": {{"subjectRef": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "behaviours": ["BEHAVIOUR_STALKING"], "area": "{area}", "receivedAtMs": "1795300000000"}}}}}}"#
    )
}

/// Copy the first `n` entries of `world`'s log, byte for byte, to a fresh server.
fn restore(world: &World, n: usize) -> NatsServer {
    let copy = NatsServer::start().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let from = hru_log::EventLog::connect(&world.nats.url()).await.unwrap();
        let entries = from
            .reader()
            .replay(1, &[])
            .await
            .unwrap()
            .try_collect::<Vec<_>>()
            .await
            .unwrap();
        hru_log::EventLog::connect(&copy.url()).await.unwrap();
        let js = async_nats::jetstream::new(async_nats::connect(copy.url()).await.unwrap());
        for e in entries.into_iter().take(n) {
            js.publish(e.subject.to_string(), e.payload)
                .await
                .unwrap()
                .await
                .unwrap();
        }
    });
    copy
}

fn verify_against(nats: &NatsServer, world: &World, witness: &str) -> (bool, String) {
    let out = hru_tests::hru(
        nats,
        &[
            "--policies",
            &hru_tests::path(world.dir.path(), "policies"),
            "audit",
            "verify",
            "--witness",
            witness,
            "--format",
            "json",
        ],
    );
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn a_truncated_or_rewritten_log_is_caught_against_a_witness_copy() {
    let world = World::new(AGREEMENT, &PARTIES);
    let keys = hru_tests::path(world.dir.path(), "keys");
    let case = "0b9e2a7c-5d1f-4c3a-9e8b-7a6f5e4d3c2b";
    for area in ["Chester", "Crewe", "Nantwich"] {
        let out = world.append(
            "police-hru",
            &world.event(&format!("{area}.json"), &referral(case, area)),
        );
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let before_checkpoint = world.run(&["replay", "--party", "police-hru", "--keys", &keys, "--format", "json"]);
    assert!(before_checkpoint.status.success());
    let out = world.run(&["audit", "checkpoint", "--party", "police-hru", "--keys", &keys]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let witness_file = hru_tests::path(world.dir.path(), "probation-witness.jsonl");
    let out = world.run(&[
        "audit",
        "witness",
        "--party",
        "probation",
        "--keys",
        &keys,
        "--out",
        &witness_file,
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("witnessed 1 checkpoints"), "{text}");
    // Witnessing again adds nothing.
    let again = world.run(&[
        "audit",
        "witness",
        "--party",
        "probation",
        "--keys",
        &keys,
        "--out",
        &witness_file,
    ]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("witnessed 0 checkpoints"));

    let (clean, report) = verify_against(&world.nats, &world, &witness_file);
    assert!(clean, "the live log is clean: {report}");

    // A server restored from a copy taken before police's last referral: the tail is gone.
    let url = world.nats.url();
    let total = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let log = hru_log::EventLog::connect(&url).await.unwrap();
            log.reader()
                .replay(1, &[])
                .await
                .unwrap()
                .try_collect::<Vec<_>>()
                .await
                .unwrap()
                .len()
        });
    let truncated = restore(&world, total - 4);
    let (clean, report) = verify_against(&truncated, &world, &witness_file);
    assert!(!clean);
    assert!(report.contains("\"truncated-tail\""), "{report}");

    // A copy without police's last referral, then police's history rewritten from there: a
    // different envelope at the checkpointed position.
    let rewritten = restore(&world, total - 3);
    let rewriter = World {
        nats: rewritten,
        dir: tempfile::tempdir().unwrap(),
        broker: None,
        replicas: 1,
        own_groups: false,
    };
    std::fs::create_dir_all(rewriter.dir.path().join("keys")).unwrap();
    std::fs::copy(
        world.keys().join("police-hru.secret"),
        rewriter.keys().join("police-hru.secret"),
    )
    .unwrap();
    std::fs::create_dir_all(rewriter.dir.path().join("policies")).unwrap();
    for f in ["directory.toml", "round-trip.toml"] {
        std::fs::copy(
            world.dir.path().join("policies").join(f),
            rewriter.dir.path().join("policies").join(f),
        )
        .unwrap();
    }
    let out = rewriter.append(
        "police-hru",
        &rewriter.event("forged.json", &referral(case, "Elsewhere")),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (clean, report) = verify_against(&rewriter.nats, &world, &witness_file);
    assert!(!clean);
    assert!(report.contains("\"rolled-back\""), "{report}");
}
