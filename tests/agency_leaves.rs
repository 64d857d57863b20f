//! An agency leaves the agreement (the evaluation contract ends), as the runbook's commands do
//! it on a server enforcing the generated authorization: a new agreement version without the
//! party, adopted on the log; the authorization regenerated and reloaded, so its nkey stops
//! working; `hru log provision` retires its view, which copies nothing more from the log. What
//! the party received before stays readable to it (the law, not the backbone, governs its
//! copies); nothing recorded afterwards is sealed to it, even if it kept a copy of the log; its
//! past events still verify; the remaining parties carry on.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use std::time::{Duration, Instant};

use hru_tests::{CHESHIRE_PARTIES, World, succeeded};

const LEAVING: &str = "evaluation";

/// The agreement `text` as version `version`, in force from `from` (a date), without `party`:
/// its `[[party]]` and `[[produce]]` entries and every rule naming it only go, and its name
/// leaves every list it is in, as the runbook tells the agreement's editor to do.
fn without(text: &str, party: &str, version: i64, from: &str) -> String {
    let mut doc: toml::Table = text.parse().unwrap();
    let agreement = doc["agreement"].as_table_mut().unwrap();
    agreement.insert("version".into(), version.into());
    agreement.insert("effective_from".into(), from.into());
    for (_, value) in doc.iter_mut() {
        let Some(rules) = value.as_array_mut() else { continue };
        rules.retain_mut(|rule| {
            let Some(rule) = rule.as_table_mut() else { return true };
            let mut keep = true;
            for (_, field) in rule.iter_mut() {
                match field {
                    toml::Value::String(s) if s == party => keep = false,
                    toml::Value::Array(list) if list.iter().any(|v| v.as_str() == Some(party)) => {
                        list.retain(|v| v.as_str() != Some(party));
                        keep &= !list.is_empty();
                    }
                    _ => {}
                }
            }
            keep
        });
    }
    toml::to_string(&doc).unwrap()
}

#[test]
fn an_agency_that_leaves_receives_nothing_more_and_its_past_still_verifies() {
    let mut w = World::secured("../policies/cheshire-hru.toml", &CHESHIRE_PARTIES);
    let keys = hru_tests::path(w.dir.path(), "keys");
    let identity = |party: &str| format!("{keys}/{party}.secret");
    w.provision();
    let case = "5a1e0000-0000-4000-8000-000000000001";
    let referral = |area: &str| hru_tests::referral_json(case, area);
    let append = |w: &World, area: &str| {
        let file = w.event(&format!("{area}.json"), &referral(area));
        succeeded(&w.append_as("police-hru", &file), "police records a referral");
    };
    // What `party` opens of the log, read with the auditor's key (a copy of the whole log).
    let opened_by = |w: &World, party: &str| {
        let out = w.run(&[
            "--identity",
            &identity("auditor"),
            "replay",
            "--party",
            party,
            "--keys",
            &keys,
            "--format",
            "json",
        ]);
        succeeded(&out, "replay")
    };

    // Under version 1 the evaluation team receives the referral's pseudonymous facts, and
    // logs its own access.
    append(&w, "Chester");
    assert!(opened_by(&w, LEAVING).contains("Chester"));
    let access = w.event(
        "access.json",
        &format!(
            r#"{{"caseId":"{case}","accessLogged":{{"core":{{"party":"{LEAVING}","person":"analyst-1","method":"CaseService/ListCases","purpose":"evaluation","clause":"10.5"}}}}}}"#
        ),
    );
    succeeded(&w.append_as(LEAVING, &access), "evaluation logs an access");
    let view = hru_broker::view_stream(&LEAVING.parse().unwrap());
    let copied = |w: &World| view_messages(&w.nats.url(), &w.secrets("provisioner"), &view);
    let deadline = Instant::now() + Duration::from_secs(10);
    while copied(&w) < 2 {
        assert!(
            Instant::now() < deadline,
            "the view never held the referral and the access record"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // The contract ends: version 2 without the party, in force from today, checked and
    // adopted on the log by police (the agreement's coordinator).
    let v1 = std::fs::read_to_string(w.dir.path().join("policies/cheshire-hru.toml")).unwrap();
    let today = jiff::Timestamp::now().strftime("%Y-%m-%d").to_string();
    std::fs::write(
        w.dir.path().join("policies/cheshire-hru-v2.toml"),
        without(&v1, LEAVING, 2, &today),
    )
    .unwrap();
    succeeded(&w.run(&["policy", "check"]), "policy check");
    let adopted = succeeded(
        &w.run(&[
            "--identity",
            &identity("police-hru"),
            "policy",
            "adopt",
            "--party",
            "police-hru",
            "--keys",
            &keys,
        ]),
        "policy adopt",
    );
    assert!(adopted.contains("v2"), "{adopted}");

    // The authorization regenerated and reloaded: the party's nkey no longer connects.
    w.reload_authorization();
    let leaver = w.secrets(LEAVING).broker_identity();
    let url = w.nats.url();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while rt.block_on(hru_broker::connect(&url, Some(&leaver))).is_ok() {
        assert!(Instant::now() < deadline, "the departed party's nkey still connects");
        std::thread::sleep(Duration::from_millis(20));
    }

    // Provisioning under version 2 retires the view: it copies nothing more.
    let provisioned = succeeded(
        &w.run(&[
            "--identity",
            &identity("provisioner"),
            "log",
            "provision",
            "--keys",
            &keys,
        ]),
        "provision",
    );
    assert!(
        provisioned.contains(&view),
        "provision names the retired view: {provisioned}"
    );
    let retired = settled(|| copied(&w));
    append(&w, "Crewe");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(copied(&w), retired, "the retired view copies nothing recorded after it");

    // What came after is sealed to the remaining parties only: even with its keys and a copy
    // of the log the departed party opens the earlier referral and not the later one, which
    // probation reads as before.
    let theirs = opened_by(&w, LEAVING);
    assert!(theirs.contains("Chester") && !theirs.contains("Crewe"), "{theirs}");
    let probation = opened_by(&w, "probation");
    assert!(
        probation.contains("Chester") && probation.contains("Crewe"),
        "{probation}"
    );

    // Its past events still verify, and so does everything else.
    let verified = w.run(&["--identity", &identity("auditor"), "audit", "verify"]);
    succeeded(&verified, "audit verify");
}

/// What `read` gives once two reads 300 ms apart agree (what the broker had in flight landed).
fn settled(read: impl Fn() -> u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = read();
    loop {
        assert!(Instant::now() < deadline, "the count never settled: {last}");
        std::thread::sleep(Duration::from_millis(300));
        let now = read();
        if now == last {
            return now;
        }
        last = now;
    }
}

/// How many messages `view` holds (read with the provisioner's key).
fn view_messages(url: &str, provisioner: &hru_envelope::PartySecrets, view: &str) -> u64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = hru_broker::connect(url, Some(&provisioner.broker_identity()))
            .await
            .unwrap();
        let js = async_nats::jetstream::new(client);
        js.get_stream(view).await.unwrap().info().await.unwrap().state.messages
    })
}
