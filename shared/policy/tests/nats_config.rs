//! The nats-server authorization config generated from the Cheshire HRU agreement: compared
//! with its golden file, and accepted by `nats-server -t`.
//! Regenerate the golden file after changing the agreement: `UPDATE_GOLDEN=1 cargo test -p hru-policy --test nats_config`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use std::path::{Path, PathBuf};

use hru_broker::{AUDITOR, PROVISIONER, nats_config};
use hru_envelope::fixture::directory_of;
use hru_policy::CompiledIsa;
use hru_testkit::NatsServerBinary;

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(rel)
}

/// The generated config for deterministic (fixture) keys of every party and operator.
fn generated() -> String {
    let text = std::fs::read_to_string(repo("policies/cheshire-hru.toml")).unwrap();
    let parties: Vec<String> = CompiledIsa::compile(&text, "x", None)
        .unwrap()
        .parties
        .keys()
        .map(ToString::to_string)
        .collect();
    let directory = directory_of(parties.iter().map(String::as_str).chain([PROVISIONER, AUDITOR]), 1);
    let isa = CompiledIsa::compile(&text, "policies/cheshire-hru.toml", Some(&directory)).unwrap();
    nats_config(&isa.broker_rights(), &isa.broker_accounts(&directory).unwrap())
}

#[test]
fn generated_config_matches_the_golden_file() {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/cheshire-hru.nats.conf");
    let config = generated();
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &config).unwrap();
    }
    let expected = std::fs::read_to_string(&golden).expect("golden file (UPDATE_GOLDEN=1 writes it)");
    assert_eq!(
        config, expected,
        "generated config differs from tests/golden/cheshire-hru.nats.conf"
    );
    assert!(
        config.contains("\"hru.evt.*.em-vendor.TagFitted\""),
        "em-vendor publishes its own tag events"
    );
    assert!(
        !config.contains("\"hru.evt.*.em-vendor.ReferralReceived\""),
        "em-vendor may not produce referrals"
    );
}

#[test]
fn nats_server_accepts_the_generated_config() {
    let bin = NatsServerBinary::find().expect("nats-server (scripts/tools.sh installs it)");
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("js");
    let file = dir.path().join("hru.conf");
    let config = format!(
        "listen: 127.0.0.1:-1\njetstream {{ store_dir: {:?}, sync_interval: always }}\n{}",
        store.display().to_string(),
        generated()
    );
    std::fs::write(&file, config).unwrap();
    let out = std::process::Command::new(&bin.path)
        .arg("-t")
        .arg("-c")
        .arg(&file)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "nats-server -t refused the config: {said}");
    assert!(said.contains("is valid"), "{said}");
}
