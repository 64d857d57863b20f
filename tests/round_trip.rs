//! The first round trip through the real binary and a real nats-server: keys, append, replay.
//! police-hru seals a referral whose `core` is for police, probation and both trusts and whose
//! `identity` is for police alone; each party's replay shows exactly that.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use futures::TryStreamExt as _;
use hru_envelope::{Directory, verify};
use hru_log::EventLog;
use hru_log::SharedLog as _;
use hru_tests::World;
use serde_json::Value;

const PARTIES: [&str; 5] = ["police-hru", "probation", "cwp", "mersey-care", "em-vendor"];
const AGREEMENT: &str = "data/round-trip.toml";

const CASE: &str = "0b5c2a57-6f0e-4b52-9d7c-2f3e8a1d4c10";

fn referral(area: &str) -> String {
    format!(
        r#"{{
  "caseId": "{CASE}",
  "occurredAt": "2026-11-21T22:40:00Z",
  "referralReceived": {{
    "core": {{
      "subjectRef": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
      "behaviours": ["BEHAVIOUR_STALKING", "BEHAVIOUR_ONLINE"],
      "area": "{area}",
      "receivedAtMs": "1795300000000",
      "outOfHours": true
    }},
    "identity": {{ "subject": {{ "fullName": "Sam Example", "dateOfBirth": "1990-02-03" }} }}
  }}
}}"#
    )
}

fn referrals(lines: &[Value]) -> Vec<&Value> {
    lines.iter().filter(|l| l["event_type"] == "ReferralReceived").collect()
}

fn refused(line: &Value) -> Vec<(String, String)> {
    line["refused"]
        .as_array()
        .expect("refused list")
        .iter()
        .map(|r| {
            (
                r["section"].as_str().unwrap_or_default().to_owned(),
                r["reason"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

#[test]
fn each_party_reads_exactly_what_the_agreement_gives_it() {
    let world = World::new(AGREEMENT, &PARTIES);
    let out = world.append("police-hru", &world.event("referral.json", &referral("Cheshire East")));
    assert!(out.status.success(), "append: {}", String::from_utf8_lossy(&out.stderr));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        printed.lines().filter(|l| l.contains("\tKeyGranted\t")).count(),
        2,
        "{printed}"
    );
    assert_eq!(
        printed.lines().filter(|l| l.contains("\tReferralReceived\t")).count(),
        1,
        "{printed}"
    );

    let (out, police) = world.replay("police-hru");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r = referrals(&police);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0]["readable"], serde_json::json!(["core", "identity"]));
    assert_eq!(r[0]["content"]["identity"]["subject"]["fullName"], "Sam Example");
    assert_eq!(r[0]["content"]["core"]["area"], "Cheshire East");

    let (_, probation) = world.replay("probation");
    let r = referrals(&probation);
    assert_eq!(r[0]["readable"], serde_json::json!(["core"]));
    assert_eq!(r[0]["content"]["core"]["area"], "Cheshire East");
    assert_eq!(refused(r[0]), [("identity".to_owned(), "not-in-audience".to_owned())]);
    assert!(
        r[0]["content"].get("identity").is_none(),
        "no identity leaks to probation"
    );

    for trust in ["cwp", "mersey-care"] {
        let (_, lines) = world.replay(trust);
        assert_eq!(referrals(&lines)[0]["readable"], serde_json::json!(["core"]), "{trust}");
    }

    let (_, em) = world.replay("em-vendor");
    let r = referrals(&em);
    assert_eq!(r[0]["readable"], serde_json::json!([]));
    assert_eq!(
        refused(r[0]),
        [
            ("core".to_owned(), "not-in-audience".to_owned()),
            ("identity".to_owned(), "not-in-audience".to_owned())
        ]
    );
    assert!(!String::from_utf8_lossy(&world.replay("em-vendor").0.stdout).contains("Sam Example"));
}

#[test]
fn every_envelope_verifies_with_the_directory_alone() {
    let world = World::new(AGREEMENT, &PARTIES);
    for area in ["Halton", "Warrington"] {
        let out = world.append("police-hru", &world.event("r.json", &referral(area)));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let text = std::fs::read_to_string(world.dir.path().join("policies/directory.toml")).expect("directory");
    let directory = Directory::from_toml(&text, "directory.toml").expect("parses");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let entries = rt.block_on(async {
        let log = EventLog::connect(&world.nats.url()).await.expect("connects");
        log.reader()
            .replay(1, &[])
            .await
            .expect("replays")
            .try_collect::<Vec<_>>()
            .await
            .expect("replays")
    });
    assert_eq!(entries.len(), 4, "two grants, then two referrals (epochs reused)");
    for e in &entries {
        let v = verify(&e.payload, &directory).expect("verifies without any secret key");
        assert_eq!(
            v.header.producer_seq, e.sequence,
            "one producer: chain seq equals stream seq here"
        );
    }
}

#[test]
fn a_lost_producer_state_is_recovered_from_the_log() {
    let world = World::new(AGREEMENT, &PARTIES);
    let event = world.event("r.json", &referral("Cheshire West"));
    assert!(world.append("police-hru", &event).status.success());
    std::fs::remove_dir_all(world.keys().join("police-hru.cli.producer")).expect("the store existed");
    let out = world.append("police-hru", &event);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The chain continues (replay checks it and exits 0) and new epochs are granted.
    let (out, lines) = world.replay("probation");
    assert!(
        out.status.success(),
        "no chain break: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let r = referrals(&lines);
    assert_eq!(r.len(), 2);
    assert!(r.iter().all(|l| l["readable"] == serde_json::json!(["core"])));
}

#[test]
fn bad_input_is_refused_by_name_and_nothing_is_appended() {
    let world = World::new(AGREEMENT, &PARTIES);
    let bad = [
        ("unknown.json", referral("X").replace("\"area\"", "\"areaa\""), "areaa"),
        ("case.json", referral("X").replace(CASE, "not-a-uuid"), "case_id"),
        ("syntax.json", "{\n  \"caseId\": \n}".to_owned(), "syntax.json:3:1"),
        ("empty-area.json", referral(" "), "ReferralReceived.core.area"),
        ("no-event.json", format!("{{\"caseId\": \"{CASE}\"}}"), "event"),
    ];
    for (name, json, needle) in bad {
        let out = world.append("police-hru", &world.event(name, &json));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {err}");
        assert!(err.contains(needle), "{name}: error names {needle:?}: {err}");
    }
    // A section the agreement shares with nobody is refused, naming the rule that is missing.
    let closed = format!(
        r#"{{"caseId": "{CASE}", "caseClosed": {{"core": {{"reason": "resolved", "closedAtMs": "1795300000000"}}}}}}"#
    );
    let out = world.append("police-hru", &world.event("closed.json", &closed));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no ISA rule shares CaseClosed.core") && err.contains("no [[share]] rule"),
        "{err}"
    );
    let (_, lines) = world.replay("police-hru");
    assert!(lines.is_empty(), "nothing was appended: {lines:?}");
}

#[test]
fn audit_verify_is_clean_on_a_real_log_and_finds_a_forgery() {
    let world = World::new(AGREEMENT, &PARTIES);
    for area in ["Macclesfield", "Runcorn"] {
        assert!(
            world
                .append("police-hru", &world.event("r.json", &referral(area)))
                .status
                .success()
        );
    }
    let out = world.run(&["audit", "verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stdout).contains("4 envelopes checked (from sequence 1), no findings"));

    // Bytes published straight to the broker, bypassing the library.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = hru_log::connect(&world.nats.url(), None).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let subject = format!("hru.evt.{}.police-hru.ReferralReceived", CASE.replace('-', ""));
        js.publish(subject, b"\x0a\x02no".to_vec().into())
            .await
            .unwrap()
            .await
            .unwrap();
    });
    let out = world.run(&["audit", "verify", "--format", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["kind"], "malformed");
    assert_eq!(lines[0]["sequence"], 5);
    assert_eq!(lines.last().unwrap()["summary"]["findings"], 1);
}

/// The first step of the leaked-key procedure: `hru keys rotate` prints the party's directory
/// block, which an operator pastes as printed. The amended directory loads, the party's next event is signed by
/// the new key, and the audit of the whole log (the rotation included) is clean.
#[test]
fn a_rotated_key_pasted_into_the_directory_is_accepted() {
    let world = World::new(AGREEMENT, &PARTIES);
    let first = world.append("police-hru", &world.event("r1.json", &referral("Chester")));
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let keys = hru_tests::path(world.dir.path(), "keys");
    let out = world.run(&["keys", "rotate", "--party", "police-hru", "--keys", &keys]);
    assert!(out.status.success(), "rotate: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let entry = &stdout[stdout.find("[[party]]").expect("a directory entry")..];
    // As the operator does: the party's block replaced by the printed one.
    world.replace_party("police-hru", entry);
    let file = world.dir.path().join("policies/directory.toml");
    Directory::from_toml(&std::fs::read_to_string(&file).unwrap(), "directory.toml")
        .expect("the printed entry loads as printed");

    let second = world.append("police-hru", &world.event("r2.json", &referral("Runcorn")));
    assert!(second.status.success(), "{}", String::from_utf8_lossy(&second.stderr));
    let audit = world.run(&["audit", "verify"]);
    assert_eq!(
        audit.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&audit.stdout),
        String::from_utf8_lossy(&audit.stderr)
    );
    let (_, lines) = world.replay("police-hru");
    assert_eq!(
        referrals(&lines).len(),
        2,
        "both referrals read, before and after the rotation"
    );
}
