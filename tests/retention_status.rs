//! `hru retention status` and `hru retention destroy` on a server enforcing the generated
//! authorization: the auditor sees every epoch the log granted, its retention class from the
//! agreement (a referral's seven years, a tag fitting's two), when it expires (the retention
//! counted from the end of its month), and, as of a time past that, which holders have yet to
//! confirm destroying the key; a party with its own key sees the epochs it holds. A producer
//! destroys its expired keys, each announced by a signed `EpochKeyDestroyed`, once, and never
//! reuses their numbers.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use hru_tests::{CHESHIRE_PARTIES, World, succeeded};
use serde_json::Value;

#[test]
fn the_auditor_sees_what_expires_when_and_who_holds_it() {
    let w = World::secured("../policies/cheshire-hru.toml", &CHESHIRE_PARTIES);
    let keys = hru_tests::path(w.dir.path(), "keys");
    let identity = |party: &str| format!("{keys}/{party}.secret");
    w.provision();
    let case = "8e7e0000-0000-4000-8000-000000000001";
    let referral = w.event("referral.json", &hru_tests::referral_json(case, "Chester"));
    succeeded(&w.append_as("police-hru", &referral), "police records a referral");
    let fitted = w.event(
        "fitted.json",
        &hru_tests::tag_fitted_json(case, "tag-1", "AAAAAAAAAAAAAAAAAAAAAg==", "vd-1", 1_795_300_000_000),
    );
    succeeded(&w.append_as("em-vendor", &fitted), "the vendor records a fitting");

    let status = |who: &str, extra: &[&str]| -> Vec<Value> {
        let mut args = vec!["--identity", who, "retention", "status", "--format", "json"];
        args.extend_from_slice(extra);
        // One line per epoch key (`kind` "epoch"); each holder's period keys follow.
        succeeded(&w.run(&args), "retention status")
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|r| r["kind"] == "epoch")
            .collect()
    };
    let auditor = identity("auditor");
    let now = status(&auditor, &[]);
    let month = jiff::Timestamp::now().strftime("%Y-%m").to_string();
    let expires = |class: &str| hru_policy::Retention::parse(class).unwrap().expires(&month).unwrap();
    let of = |rows: &[Value], producer: &str| -> Vec<Value> {
        rows.iter().filter(|r| r["producer"] == producer).cloned().collect()
    };
    let police = of(&now, "police-hru");
    let vendor = of(&now, "em-vendor");
    assert!(!police.is_empty() && !vendor.is_empty(), "{now:?}");
    for (rows, class) in [(&police, "7y"), (&vendor, "2y")] {
        for r in rows {
            assert_eq!(r["retention"], class, "{r}");
            assert_eq!(r["month"], month.as_str(), "{r}");
            assert_eq!(r["expires_at_ms"], expires(class), "{r}");
            assert_eq!(r["state"], "live", "{r}");
        }
    }

    // Past the referral's retention every epoch is due, and every holder (its producer and
    // each member) has yet to confirm destroying its copy.
    let later = status(&auditor, &["--at", "2040-01-01T00:00:00Z"]);
    assert_eq!(later.len(), now.len());
    for r in &later {
        assert_eq!(r["state"], "due", "{r}");
        let awaiting: Vec<&str> = r["awaiting"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(awaiting.contains(&r["producer"].as_str().unwrap()), "{r}");
        for m in r["members"].as_array().unwrap() {
            assert!(awaiting.contains(&m.as_str().unwrap()), "{r}");
        }
    }
    // Between the two: the tag fitting's two years have passed, the referral's seven have not.
    let between = status(&auditor, &["--at", "2031-06-01T00:00:00Z"]);
    assert!(
        of(&between, "em-vendor").iter().all(|r| r["state"] == "due"),
        "{between:?}"
    );
    assert!(
        of(&between, "police-hru").iter().all(|r| r["state"] == "live"),
        "{between:?}"
    );

    // The vendor, with its own key, sees the epochs it holds and no other (its view copies the
    // log a moment behind it).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut own = status(&identity("em-vendor"), &["--party", "em-vendor"]);
    while own.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the vendor's view never held its grants"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
        own = status(&identity("em-vendor"), &["--party", "em-vendor"]);
    }
    for r in &own {
        let holds = r["producer"] == "em-vendor" || r["members"].as_array().unwrap().iter().any(|m| m == "em-vendor");
        assert!(holds, "{r}");
    }

    // The vendor's producer destroys its keys past their retention (as of the same time,
    // early): each announced on the log, gone from its store for good.
    let vendor_epochs = of(&between, "em-vendor").len();
    let destroy = |at: &str| {
        succeeded(
            &w.run(&[
                "--identity",
                &identity("em-vendor"),
                "retention",
                "destroy",
                "--party",
                "em-vendor",
                "--keys",
                &keys,
                "--at",
                at,
            ]),
            "retention destroy",
        )
    };
    let out = destroy("2031-06-01T00:00:00Z");
    assert!(
        out.contains(&format!("{vendor_epochs} epoch keys destroyed, 0 kept")),
        "{out}"
    );
    assert!(
        destroy("2031-06-01T00:00:00Z").contains("0 epoch keys destroyed"),
        "destroyed once"
    );
    let after = status(&auditor, &["--at", "2031-06-01T00:00:00Z"]);
    for r in of(&after, "em-vendor") {
        assert_eq!(r["destroyed_by"], serde_json::json!(["em-vendor"]), "{r}");
        let awaiting = r["awaiting"].as_array().unwrap();
        assert!(
            !awaiting.iter().any(|p| p == "em-vendor") && !awaiting.is_empty(),
            "{r}"
        );
    }
    for r in of(&after, "police-hru") {
        assert_eq!(
            r["destroyed_by"],
            serde_json::json!([]),
            "police destroyed nothing: {r}"
        );
    }
    // The vendor records again: new epochs, numbered above the destroyed ones.
    let again = w.event(
        "again.json",
        &hru_tests::tag_fitted_json(case, "tag-2", "AAAAAAAAAAAAAAAAAAAAAw==", "vd-2", 1_795_300_000_000),
    );
    succeeded(&w.append_as("em-vendor", &again), "the vendor records another fitting");
    let latest = of(&status(&auditor, &[]), "em-vendor");
    assert_eq!(latest.len(), 2 * vendor_epochs, "{latest:?}");
    let mut numbers: Vec<(String, u64)> = latest
        .iter()
        .map(|r| (r["audience"].as_str().unwrap().to_owned(), r["epoch"].as_u64().unwrap()))
        .collect();
    numbers.sort();
    numbers.dedup();
    assert_eq!(numbers.len(), latest.len(), "no epoch number used twice: {latest:?}");

    succeeded(&w.run(&["--identity", &auditor, "audit", "verify"]), "audit verify");

    // A time that is not one is refused with what to give.
    let bad = w.run(&["--identity", &auditor, "retention", "status", "--at", "next year"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--at"));
}
