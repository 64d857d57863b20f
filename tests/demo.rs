//! `hru demo --non-interactive` plays the whole case and prints what each party sees.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use std::process::Command;

#[test]
fn the_demo_plays_the_case_to_a_clean_audit() {
    let policies = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let out = Command::new(hru_tests::hru_bin())
        .args([
            "--policies",
            &policies.display().to_string(),
            "demo",
            "--non-interactive",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    for line in [
        "police-hru       sees ReferralReceived: core, identity, narrative",
        "probation        sees ReferralReceived: core; cannot see identity, narrative (not shared with probation)",
        "cwp              sees RiskAssessed: summary, clinical",
        "police-hru       sees RiskAssessed: summary; cannot see clinical (not shared with police-hru)",
        "control room ← BREACH_KIND_PROXIMITY_WARNING BREACH_STATE_OPENED",
        "control room ← BREACH_KIND_PROXIMITY BREACH_STATE_OPENED",
        "control room ← BREACH_KIND_CURFEW BREACH_STATE_OPENED",
        "victim's phone ← signed alert: BREACH_KIND_PROXIMITY",
        "acknowledged in",
        "cwp review 1 due",
        "no findings",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
}
