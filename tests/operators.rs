//! Least privilege for operators, on a server enforcing the generated authorization: every
//! party runs the CLI's producing and witnessing commands with its own nkey and nothing more,
//! and the auditor's read-only key is enough for the log commands.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use std::path::Path;

use hru_tests::{CHESHIRE_PARTIES, World, succeeded};

#[test]
fn each_party_produces_and_witnesses_with_its_own_key() {
    let w = World::secured("../policies/cheshire-hru.toml", &CHESHIRE_PARTIES);
    w.provision();
    let keys = w.keys().display().to_string();
    let identity = |party: &str| w.keys().join(format!("{party}.secret")).display().to_string();
    let case = "5d0c8a3e-1f2b-4c6d-8e9f-0a1b2c3d4e5f";

    // The vendor records a tag fitting with its own key.
    let fitted = w.event(
        "fitted.json",
        &hru_tests::tag_fitted_json(
            case,
            "tag-0001",
            "AAAAAAAAAAAAAAAAAAAAAA==",
            "vd-0001",
            1_795_300_000_000,
        ),
    );
    let vendor = identity("em-vendor");
    assert!(succeeded(&w.append_as("em-vendor", &fitted), "the vendor's TagFitted").contains("TagFitted"));

    // Police records a referral and checkpoints its chain, with its own key.
    let referral = w.event(
        "referral.json",
        &format!(
            r#"{{"caseId":"{case}","referralReceived":{{"core":{{"subjectRef":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","behaviours":["BEHAVIOUR_STALKING"],"area":"Chester","receivedAtMs":"1795300000000"}}}}}}"#
        ),
    );
    let police = identity("police-hru");
    succeeded(&w.append_as("police-hru", &referral), "police's referral");
    succeeded(
        &w.run(&[
            "--identity",
            &police,
            "audit",
            "checkpoint",
            "--party",
            "police-hru",
            "--keys",
            &keys,
        ]),
        "police's checkpoint",
    );

    // Probation witnesses it with its own key, which reads only probation's view.
    let witness_file = w.dir.path().join("probation-witness.jsonl").display().to_string();
    let probation = identity("probation");
    let witness = |_: ()| {
        w.run(&[
            "--identity",
            &probation,
            "audit",
            "witness",
            "--party",
            "probation",
            "--keys",
            &keys,
            "--out",
            &witness_file,
        ])
    };
    // Probation's view is sourced from the log: the checkpoint reaches it within moments, and a
    // witness run before it does witnesses nothing yet (the next scheduled run does).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !succeeded(&witness(()), "probation's witness").contains("witnessed 1 checkpoints") {
        assert!(
            std::time::Instant::now() < deadline,
            "probation never witnessed police's checkpoint"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(succeeded(&witness(()), "witnessing again").contains("witnessed 0 checkpoints"));

    // The auditor's read-only key audits the log, the countersignature and the witness copy.
    let auditor = identity("auditor");
    let report = succeeded(
        &w.run(&["--identity", &auditor, "audit", "verify", "--witness", &witness_file]),
        "the auditor's verify",
    );
    assert!(report.contains("no findings"), "{report}");

    // What holds secrets or plaintext is its owner's alone.
    hru_tests::assert_private(&[
        (w.keys(), 0o700),
        (w.keys().join("em-vendor.secret"), 0o600),
        (w.keys().join("em-vendor.cli.producer"), 0o700),
        (w.keys().join("police-hru.cli.producer"), 0o700),
        (w.keys().join("probation.witness.producer"), 0o700),
        (w.dir.path().join("probation-witness.jsonl"), 0o600),
    ]);

    // A key used for another party's commands is refused before anything is sealed.
    let out = w.run(&[
        "--identity",
        &vendor,
        "append",
        "--party",
        "police-hru",
        "--keys",
        &keys,
        &referral,
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--identity") && err.contains("em-vendor"), "{err}");
}

/// A server that takes clients over TLS only: `hru` connects when `HRU_NATS_CA` names the CA,
/// and is refused without it.
#[test]
fn the_cli_connects_over_tls_with_the_ca_it_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = hru_node::tls::new_ca("NATS test CA").unwrap();
    let server = hru_node::tls::issue(
        &ca,
        "nats",
        &["localhost", "127.0.0.1"],
        hru_node::tls::DEFAULT_CERT_VALIDITY,
    )
    .unwrap();
    std::fs::write(d.join("ca.pem"), &ca.cert_pem).unwrap();
    std::fs::write(d.join("server.pem"), &server.cert_pem).unwrap();
    std::fs::write(d.join("server.key"), &server.key_pem).unwrap();
    let block = format!(
        "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n  timeout: 5\n}}\n",
        d.join("server.pem").display().to_string(),
        d.join("server.key").display().to_string()
    );
    let nats = hru_testkit::NatsServer::builder().extra_config(&block).start().unwrap();
    let url = format!("tls://127.0.0.1:{}", nats.port());
    let run = |ca: Option<&Path>| {
        let mut command = std::process::Command::new(hru_tests::hru_bin());
        command
            .args(["--nats", &url, "log", "provision"])
            .env(
                "HRU_POLICIES",
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies"),
            )
            .env_remove("HRU_NATS_CA");
        if let Some(ca) = ca {
            command.env("HRU_NATS_CA", ca);
        }
        command.output().unwrap()
    };
    let with = run(Some(&d.join("ca.pem")));
    succeeded(&with, "provision over TLS with the CA");
    let without = run(None);
    assert!(
        !without.status.success(),
        "without the CA the server's certificate is not trusted"
    );
}
