//! `hru policy explain`, `adopt` and `nats-config` on the real Cheshire HRU agreement, with
//! freshly generated keys for every party and a real nats-server.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use hru_tests::World;
use serde_json::Value;

const PARTIES: [&str; 11] = [
    "police-hru",
    "police-control",
    "victim-advocacy",
    "probation",
    "cwp",
    "mersey-care",
    "em-vendor",
    "geofence",
    "evaluation",
    "provisioner",
    "auditor",
];
const AGREEMENT: &str = "../policies/cheshire-hru.toml";

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn explain_prints_the_page_a_dpo_signs() {
    let world = World::new(AGREEMENT, &PARTIES);
    let out = world.run(&["policy", "explain", "--party", "probation"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let page = stdout(&out);
    assert!(
        page.contains("Party probation: probation (Probation Service)"),
        "{page}"
    );
    assert!(page.contains("ReferralReceived.core from police-hru"), "{page}");
    assert!(
        page.contains("Crime and Disorder Act 1998"),
        "legal basis text is shown: {page}"
    );
    assert!(
        !page.contains("RiskAssessed.clinical from"),
        "clinical formulations never reach probation"
    );
    assert!(page.contains("May call:"));

    let out = world.run(&["policy", "explain", "--party", "em-vendor", "--format", "json"]);
    let page: Value = serde_json::from_str(stdout(&out).trim()).expect("one JSON object");
    let received: Vec<String> = page["receives"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| format!("{}.{}", r["event"].as_str().unwrap(), r["section"].as_str().unwrap()))
        .collect();
    assert!(
        received
            .iter()
            .all(|r| !r.ends_with(".identity") && !r.ends_with(".clinical") && !r.ends_with(".narrative"))
    );
    assert!(received.contains(&"ZoneDefined.core".to_owned()), "{received:?}");
    assert!(
        !received
            .iter()
            .any(|r| r.starts_with("ReferralReceived") || r.starts_with("OrderIssued")),
        "{received:?}"
    );

    let out = world.run(&["policy", "explain", "--party", "nobody"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn an_adopted_agreement_is_checked_against_the_local_file() {
    let world = World::new(AGREEMENT, &PARTIES);
    let keys = hru_tests::path(world.dir.path(), "keys");
    let out = world.run(&["policy", "adopt", "--party", "police-hru", "--keys", &keys]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout(&out).contains("PolicyAdopted\tcheshire-hru v1\tsha256 "));

    let (out, lines) = world.replay("probation");
    assert!(out.status.success(), "{}", stdout(&out));
    let adopted = lines
        .iter()
        .find(|l| l["event_type"] == "PolicyAdopted")
        .expect("every party sees the adoption");
    assert_eq!(adopted["matches_local_file"], true);

    // The local agreement drifts from what was adopted: replay says so and exits 1.
    let file = world.dir.path().join("policies/cheshire-hru.toml");
    let mut text = std::fs::read_to_string(&file).unwrap();
    text.push_str("\n# edited after adoption\n");
    std::fs::write(&file, text).unwrap();
    let (out, lines) = world.replay("probation");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        lines.iter().find(|l| l["event_type"] == "PolicyAdopted").unwrap()["matches_local_file"],
        false
    );
}

#[test]
fn nats_config_names_every_party_by_its_nkey() {
    let world = World::new(AGREEMENT, &PARTIES);
    let out_file = world.dir.path().join("hru.nats.conf");
    let out = world.run(&["policy", "nats-config", "--out", &out_file.display().to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let config = std::fs::read_to_string(&out_file).unwrap();
    let directory = std::fs::read_to_string(world.dir.path().join("policies/directory.toml")).unwrap();
    let nkeys: Vec<&str> = directory
        .lines()
        .filter_map(|l| l.strip_prefix("nats_user = "))
        .collect();
    assert_eq!(nkeys.len(), PARTIES.len());
    for k in nkeys {
        assert!(config.contains(&format!("nkey: {k}")), "{k} is in the config");
    }
}
