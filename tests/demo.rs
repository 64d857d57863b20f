//! `hru demo --non-interactive --hold` plays the whole case, prints what each party sees, and
//! keeps the control room's page served: an operator signs in at the demo's identity provider
//! in Debian's chromium and sees the case's breaches on the board and the map; the demo ends
//! by writing the evaluation report for its case load.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use std::io::{BufRead as _, Write as _};
use std::process::{Command, Stdio};
use std::time::Duration;

use hru_tests::browser::{Browser, node_bin, web_tools};
use serde_json::json;

#[test]
fn the_demo_plays_the_case_to_a_clean_audit_and_serves_the_control_rooms_page() {
    let policies = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let mut demo = Command::new(hru_tests::hru_bin())
        .args([
            "--policies",
            &policies.display().to_string(),
            "demo",
            "--non-interactive",
            "--hold",
        ])
        .env("HRU_WEB_TOOLS", web_tools())
        .env("HRU_NODE_BIN", node_bin())
        .env("HRU_DEMO_PAGE_PORT", hru_tests::free_port().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Its output, line by line, as it plays.
    let (tx, lines) = std::sync::mpsc::channel::<String>();
    let stdout = demo.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut text = String::new();
    let url = loop {
        let line = lines
            .recv_timeout(Duration::from_secs(180))
            .unwrap_or_else(|e| panic!("the demo holds with its page served ({e}); it said:\n{text}"));
        text.push_str(&line);
        text.push('\n');
        if let Some(url) = line.trim().strip_prefix("The control room's page is still served at ") {
            break url.to_owned();
        }
    };

    // A new user opens the printed address and signs in as the demo's operator.
    let mut browser = Browser::start(&[]);
    browser.call(
        "open",
        json!({"page": "op", "url": format!("{url}/"), "insecure": true}),
    );
    browser.call("signin", json!({"page": "op", "login": "pc4512", "back_to": url}));
    browser
        .wait_for("op", "#breaches tr.breach", 10_000)
        .expect("the case's breaches are on the board");
    browser
        .wait_for("op", "#map #breach-marker", 10_000)
        .expect("and the newest on the map");
    let board = browser.eval("op", "document.getElementById('breaches').innerText");
    let board = board.as_str().unwrap();
    assert!(board.contains("curfew") && board.contains("proximity"), "{board}");
    browser.screenshot("op", "demo-control-room");
    drop(browser);

    // Enter ends the demo.
    writeln!(demo.stdin.take().unwrap()).unwrap();
    let status = demo.wait().unwrap();
    reader.join().unwrap();
    text.extend(lines.try_iter().map(|l| l + "\n"));
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut demo.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{text}{stderr}");
    for line in [
        "control room page https://127.0.0.1:",
        "police-hru       sees ReferralReceived: core, identity, narrative",
        "probation        sees ReferralReceived: core; cannot see identity, narrative (not shared with probation)",
        "mersey-care      sees RiskAssessed: summary, clinical",
        "cwp              sees RiskAssessed: summary, clinical",
        "evaluation       refused: cheshire-hru v2 has no [[call]] rule letting evaluation call CaseService/GetCase",
        "evaluation (pseudonymous): interventions [\"INTERVENTION_KIND_THERAPEUTIC\"], 6 months after the intervention: window still open",
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
    // The demo ends by writing the evaluation report for its case load, and says where.
    let index = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("evaluation report: "))
        .unwrap_or_else(|| panic!("the demo prints where the report is:\n{text}"));
    let index = std::path::Path::new(index);
    let dir = index.parent().unwrap();
    for file in [
        "index.html",
        "reoffending.csv",
        "referrals_summary.csv",
        "restricted/extract.csv",
        "reoffending.svg",
    ] {
        assert!(dir.join(file).is_file(), "{file} in {}", dir.display());
    }
    let summary = std::fs::read_to_string(dir.join("referrals_summary.csv")).unwrap();
    assert!(summary.contains("referrals,<5"), "one referral, suppressed: {summary}");
    std::fs::remove_dir_all(dir).unwrap();
}
