//! Faults on a 3-node cluster while the nodes take writes and the geofence follows a simulated
//! fleet, the history and the breach decisions then checked (issue 20): a bounded run of 20
//! episodes. `HRU_CHAOS_SEED` replays another schedule; longer runs are
//! `cargo run -p hru-tests --bin hru-chaos -- --episodes N --seed S`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use hru_tests::chaos::Fault;

#[test]
fn twenty_episodes_of_partitions_pauses_kills_full_disks_and_power_cuts_lose_duplicate_and_reorder_nothing() {
    let seed = std::env::var("HRU_CHAOS_SEED")
        .ok()
        .map_or(20, |s| s.parse().expect("HRU_CHAOS_SEED is a number"));
    let report = hru_tests::chaos::run(&hru_tests::chaos::Options {
        episodes: 20,
        seed,
        sync_always: true,
        kinds: Vec::new(),
    });
    println!("{report}");
    assert!(report.verdict.safe(), "{report}");
    assert!(
        report.verdict.stuck.is_empty(),
        "the system makes progress after every fault: {report}"
    );
    assert!(report.acknowledged > 100, "the writers wrote throughout: {report}");
    assert!(report.faults.len() >= 6, "most kinds of fault were injected: {report}");
    assert!(report.breaches > 0, "the fleet raised breaches to check: {report}");
    let cuts = [Fault::PowerCutServer, Fault::PowerCutMajority, Fault::PowerCutAll];
    if cuts.iter().any(|kind| report.faults.contains_key(kind)) {
        assert!(report.cut_bytes > 0, "the power cuts took something back: {report}");
    }
}
