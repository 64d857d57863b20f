//! Crash safety of a producer: `hru append --repeat` is killed with SIGKILL at random points,
//! 50 times, and restarted. Afterwards every event the producer acknowledged (printed) is in
//! the log exactly once, and its chain is gap-free and linked.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use futures::TryStreamExt as _;
use hru_log::SharedLog as _;
use std::collections::HashMap;
use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use hru_envelope::{ChainChecker, Directory, verify};
use hru_log::EventLog;
use hru_tests::World;
use rand::Rng as _;

const PARTIES: [&str; 5] = ["police-hru", "probation", "cwp", "mersey-care", "em-vendor"];
const AGREEMENT: &str = "data/round-trip.toml";
const KILLS: usize = 50;

const EVENT: &str = r#"{
  "caseId": "6a1f3b9e-2c4d-4e8f-9a0b-1c2d3e4f5a6b",
  "referralReceived": {
    "core": { "subjectRef": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "behaviours": ["BEHAVIOUR_STALKING"], "area": "Crewe", "receivedAtMs": "1795300000000" },
    "identity": { "subject": { "fullName": "Kim Example" } }
  }
}"#;

/// Event ids of the ReferralReceived lines a run printed (each printed only once acknowledged).
fn acknowledged(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter_map(|l| {
            let cols: Vec<&str> = l.split('\t').collect();
            (cols.len() == 4 && cols[1] == "ReferralReceived").then(|| cols[2].to_owned())
        })
        .collect()
}

#[test]
fn acknowledged_events_survive_sigkill_exactly_once() {
    let world = World::new(AGREEMENT, &PARTIES);
    let event = world.event("referral.json", EVENT);
    let keys = hru_tests::path(world.dir.path(), "keys");
    let policies = hru_tests::path(world.dir.path(), "policies");
    let mut acked = Vec::new();
    let mut rng = rand::thread_rng();
    let mut killed_mid_run = 0;
    for _ in 0..KILLS {
        let mut child = Command::new(hru_tests::hru_bin())
            .args([
                "--policies",
                &policies,
                "append",
                "--party",
                "police-hru",
                "--keys",
                &keys,
                "--repeat",
                "100000",
                &event,
            ])
            .env("HRU_NATS_URL", world.nats.url())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.gen_range(5..250)));
        match child.try_wait().unwrap() {
            None => killed_mid_run += 1,
            Some(status) if !status.success() => {
                let mut err = String::new();
                child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
                panic!("a restarted producer failed: {status}: {err}");
            }
            Some(_) => {}
        }
        child.kill().ok(); // SIGKILL
        child.wait().unwrap();
        let mut out = String::new();
        child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        acked.extend(acknowledged(&out));
    }
    // A last, clean run publishes whatever the outbox still holds.
    let out = world.append("police-hru", &event);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    acked.extend(acknowledged(&String::from_utf8_lossy(&out.stdout)));
    assert!(
        killed_mid_run >= KILLS / 2,
        "most kills landed mid-run ({killed_mid_run})"
    );

    let text = std::fs::read_to_string(world.dir.path().join("policies/directory.toml")).unwrap();
    let directory = Directory::from_toml(&text, "directory.toml").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let entries = rt.block_on(async {
        EventLog::connect(&world.nats.url())
            .await
            .unwrap()
            .reader()
            .replay(1, &[])
            .await
            .unwrap()
            .try_collect::<Vec<_>>()
            .await
            .unwrap()
    });
    let mut times: HashMap<String, u32> = HashMap::new();
    let mut chains = ChainChecker::new();
    for e in &entries {
        let v = verify(&e.payload, &directory).expect("every stored envelope verifies");
        chains
            .observe(&v.header, &v.digest)
            .unwrap_or_else(|b| panic!("chain break at {}: {b}", e.sequence));
        *times.entry(v.header.event_id.to_string()).or_default() += 1;
    }
    let lost = acked.iter().filter(|id| !times.contains_key(*id)).count();
    let duplicated = times.values().filter(|n| **n > 1).count();
    println!(
        "{KILLS} kills ({killed_mid_run} mid-run): acknowledged {}, in log {}, lost {lost}, duplicated {duplicated}",
        acked.len(),
        entries.len()
    );
    assert_eq!(lost, 0, "every acknowledged event is in the log");
    assert_eq!(duplicated, 0, "nothing is stored twice");
}
